"""`tickcast run` configuration: precedence, validation, secrets."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import DEFAULT_MAX_BATCH_TICKS, ConfigError, RunConfig


def write(tmp_path, text: str):
    path = tmp_path / "tickcast.toml"
    path.write_text(text)
    return path


def test_file_then_env_then_flags(tmp_path):
    path = write(tmp_path, 'model = "m"\nmax_batch_ticks = 100\nmax_batch_ms = 7\ngroup_id = "from-file"\n'
                           'input_topics = ["a", "b"]\n')
    cfg = RunConfig.load(path, env={"TICKCAST_MAX_BATCH_MS": "9", "TICKCAST_GROUP_ID": "from-env"},
                         flags={"group_id": "from-flag"})
    assert (cfg.max_batch_ticks, cfg.max_batch_ms, cfg.group_id) == (100, 9, "from-flag")
    assert cfg.input_topics == ["a", "b"]


def test_engine_is_auto_unless_set(tmp_path):
    assert RunConfig.load(write(tmp_path, 'model = "m"\n'), env={}).engine == "auto"
    assert RunConfig.load(write(tmp_path, 'model = "m"\nengine = "keras"\n'), env={}).engine == "keras"
    assert RunConfig.load(write(tmp_path, 'model = "m"\n'), env={}, flags={"engine": "kernel"}).engine == "kernel"


def test_tickcast_table_is_accepted(tmp_path):
    cfg = RunConfig.load(write(tmp_path, '[tickcast]\nmodel = "m"\noutput_mode = "last_per_instrument"\n'), env={})
    assert cfg.output_mode == "last_per_instrument"


@pytest.mark.parametrize("text, message", [
    ('model = "m"\nmax_batch_tick = 5\n', "did you mean 'max_batch_ticks'"),
    ('model = "m"\nmax_batch_ticks = "many"\n', "max_batch_ticks from"),
    ('model = "m"\nmax_batch_ticks = 0\n', r"max_batch_ticks = 0 is outside 1\.\.10000000 ticks"),
    ('model = "m"\nmax_batches_in_flight = 0\n', r"max_batches_in_flight = 0 is outside 1\.\.16 batches"),
    ('model = "m"\noutput_mode = "sometimes"\n', "output_mode = 'sometimes' is not one of"),
    ('model = "m"\nreset_gap = "soon"\n', "is not a duration"),
    ('model = "m"\nmetrics_address = "9108"\n', "is not host:port"),
    ('model = "m"\nengine = "torch"\n', "engine = 'torch' is not one of 'auto', 'kernel', 'keras'"),
    ('model = "m"\nsecurity_protocol = "SASL_SSL"\n', "needs sasl_mechanism"),
    ('model = "m"\ninput_topics = ["t"]\noutput_topic = "t"\n', "must differ"),
    ('model = "m"\ngroup_instance_id = "pod 0"\n', "group_instance_id = 'pod 0' must be 1-249 characters"),
    ('model = "m"\ngroup_instance_id = ".."\n', "not '.' or '..'"),
    ("model = \n", "not valid TOML"),
    ('input_topics = ["t"]\n', "no model bundle given"),
])
def test_mistakes_are_named_in_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig.load(write(tmp_path, text), env={})
    assert "\n" not in str(err.value)


def test_secrets_are_masked_and_never_echoed(tmp_path):
    secret = "hunter2-do-not-print"
    cfg = RunConfig.load(write(tmp_path, f'model = "m"\nsecurity_protocol = "SASL_PLAINTEXT"\n'
                                         f'sasl_mechanism = "PLAIN"\nsasl_username = "u"\nsasl_password = "{secret}"\n'),
                         env={})
    assert cfg.kafka_security()["sasl_plain_password"] == secret
    assert secret not in str(cfg.redacted()) and cfg.redacted()["sasl_password"] == "***"
    with pytest.raises(ConfigError) as err:
        RunConfig.load(write(tmp_path, 'model = "m"\nsasl_password = ["12345"]\n'), env={})
    assert "12345" not in str(err.value)


def test_password_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = RunConfig.load(env={}, flags={"model": "m", "security_protocol": "SASL_SSL", "sasl_mechanism":
                                        "SCRAM-SHA-512", "sasl_password_file": str(tmp_path / "pw")})
    assert cfg.kafka_security()["sasl_plain_password"] == "s3cret"


def test_config_check_command(tmp_path):
    good = write(tmp_path, 'model = "m"\nsasl_password = "topsecret"\n')
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "check", str(good), "--ignore-env"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout and "topsecret" not in out.stdout + out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "m"\nmax_batch_ms = -1\n')
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "check", str(bad), "--ignore-env"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "tickcast: error: max_batch_ms = -1 is outside 1..600000 ms (a tick's latency budget)"


def test_run_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--help"], capture_output=True, text=True)
    text = " ".join(out.stdout.split())
    for f in fields(RunConfig):
        flag = f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"  # --candidate DIR, repeatable
        assert f"{flag} " in text and f"TICKCAST_{f.name.upper()}" in text, f.name


def test_every_command_and_library_function_has_the_one_micro_batch_default(monkeypatch):
    from pipeline.cli import build_parser
    from pipeline.evaluation.backtest import run_backtest
    from pipeline.evaluation.walkforward import run_walkforward
    from pipeline.files.sources import TableSource

    monkeypatch.delenv("TICKCAST_MAX_BATCH_TICKS", raising=False)
    parser = build_parser()
    commands = {
        "backtest": ["backtest", "--input", "x", "--model", "m", "--out", "o"],
        "walkforward": ["walkforward", "--input", "x", "--out", "o"],
        "demo": ["demo"],
    }
    for name, argv in commands.items():
        assert parser.parse_args(argv).max_batch_ticks == DEFAULT_MAX_BATCH_TICKS, name
    assert RunConfig().max_batch_ticks == DEFAULT_MAX_BATCH_TICKS
    for fn in (run_backtest, run_walkforward, TableSource):
        assert inspect.signature(fn).parameters["max_batch_ticks"].default == DEFAULT_MAX_BATCH_TICKS, fn


@settings(deadline=None)  # the first call imports kafka-python's consumer (half a second)
@given(st.text(max_size=300))
def test_a_group_instance_id_is_accepted_exactly_when_kafka_python_accepts_it(value):
    """Kafka's own rule, as kafka-python's consumer checks it: the run refuses in one line what the client would
    refuse later, and accepts everything the client accepts, but for one: kafka-python's pattern ends in ``$``,
    which also matches before a final newline, a character the brokers refuse."""
    from kafka.consumer.group import KafkaConsumer  # noqa: PLC0415
    from kafka.errors import KafkaConfigurationError  # noqa: PLC0415

    try:
        KafkaConsumer._validate_group_instance_id(None, value)
        client_accepts = not value.endswith("\n")
    except KafkaConfigurationError:
        client_accepts = False
    try:
        RunConfig(model="m", group_instance_id=value).check()
        accepted = True
    except ConfigError as err:
        assert "\n" not in str(err)
        accepted = False
    assert accepted == (client_accepts or value == ""), "empty: dynamic membership"


def test_every_numeric_and_duration_key_has_one_range_shown_in_help_and_readme():
    from pipeline.cli import build_parser
    from pipeline.ranges import RANGES

    numeric = {f.name for f in fields(RunConfig) if f.type in ("int", "float")}
    durations = {"reset_gap", "expire_after", "warmup", "max_ts_ahead"}
    assert set(RANGES) == numeric | durations
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    for key, r in RANGES.items():
        assert f"[range: {r.describe()}]" in help_text, key
        assert f"| `{key}` | {r.describe()} |" in readme, key


def test_config_check_lists_every_problem_one_line_each(tmp_path):
    bad = write(tmp_path, 'model = "m"\nshutdown_timeout_s = nan\nfetch_max_bytes = 1e11\nreset_gap = "0.5ns"\n'
                          'max_ts_ahead = "200000d"\n')
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "check", str(bad), "--ignore-env"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "tickcast: error: shutdown_timeout_s = nan is not a finite number; give 1..3600 s",
        "tickcast: error: fetch_max_bytes = 100000000000 is outside 1024..2147483647 bytes (Kafka's fetch.max.bytes "
        "is a signed 32-bit integer)",
        "tickcast: error: reset_gap = '0.5ns' is outside 1ms..3650d",
        "tickcast: error: max_ts_ahead = '200000d' is outside 1ms..3650d",
    ]


@pytest.mark.parametrize("flag", ["--learning-rate", "--price-scale"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e300", "x"])
def test_float_flags_of_other_commands_are_refused_outside_their_range(flag, value, capsys):
    from pipeline.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--input", "t.parquet", "--out", "m", f"{flag}={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"tickcast train: error: argument {flag}: '{value}' is")
    assert build_parser().parse_args(["train", "--input", "t", "--out", "m", flag, "0.001"]) is not None
