"""Candidate models in the run config: `[[candidates]]` tables, TICKCAST_CANDIDATES, `--candidate DIR` (repeatable),
the shadow topic; each mistake one line; `config check` reports the candidates; a model version twice is one
line at start, before anything connects."""

from __future__ import annotations

import argparse
import logging
import shutil

import pytest

from pipeline.cli import build_parser, main
from pipeline.config import Candidate, ConfigError, RunConfig
from pipeline.flags import add_candidate_arg
from pipeline.ranges import MAX_CANDIDATES


def write(tmp_path, text: str):
    path = tmp_path / "tickcast.toml"
    path.write_text(text)
    return path


def test_candidates_from_tables_then_env_then_flags(tmp_path):
    path = write(tmp_path, 'model = "m"\n[[candidates]]\nmodel = "c1"\n[[candidates]]\nmodel = "c2"\n')
    assert RunConfig.load(path, env={}).candidates == [Candidate("c1"), Candidate("c2")]
    assert RunConfig.load(path, env={"TICKCAST_CANDIDATES": "e1, e2"}).candidates == [Candidate("e1"),
                                                                                      Candidate("e2")]
    args = build_parser().parse_args(["run", "--config", str(path), "--candidate", "f1", "--candidate", "f2"])
    assert args.candidates == ["f1", "f2"]
    cfg = RunConfig.load(path, env={"TICKCAST_CANDIDATES": "e1"}, flags={"candidates": args.candidates})
    assert cfg.candidates == [Candidate("f1"), Candidate("f2")]
    assert build_parser().parse_args(["run"]).candidates is None  # not given: the file's and env's stand
    assert RunConfig.load(write(tmp_path, '[tickcast]\nmodel = "m"\n[[tickcast.candidates]]\nmodel = "t"\n'),
                          env={}).candidates == [Candidate("t")]
    assert RunConfig(model="m").candidates == [] and RunConfig.load(env={}, flags={"model": "m"}).candidates == []


def test_the_shadow_topic_defaults_to_the_output_topics_and_is_shown(tmp_path):
    cfg = RunConfig.load(write(tmp_path, 'model = "m"\noutput_topic = "fc"\n'), env={})
    assert cfg.shadow_topic == "" and cfg.shadow_output_topic == "fc.shadow"
    assert cfg.redacted()["shadow_topic"] == "fc.shadow"
    cfg = RunConfig.load(write(tmp_path, 'model = "m"\nshadow_topic = "shadows"\n'), env={})
    assert cfg.shadow_output_topic == "shadows"
    assert RunConfig.load(env={"TICKCAST_SHADOW_TOPIC": "s2"}, flags={"model": "m"}).shadow_output_topic == "s2"


def test_without_candidates_an_unset_shadow_topic_is_never_refused(tmp_path):
    """A config that uses no candidates is not refused for them (its default shadow topic is unused)."""
    cfg = RunConfig.load(write(tmp_path, 'model = "m"\noutput_topic = "o"\ninput_topics = ["o.shadow"]\n'), env={})
    assert cfg.candidates == []


TOO_MANY = "".join(f'[[candidates]]\nmodel = "c{i}"\n' for i in range(MAX_CANDIDATES + 1))


@pytest.mark.parametrize("text, message", [
    ('model = "m"\n[[candidates]]\nmodle = "c"\n', "candidate 1 from .* has unknown key 'modle'; did you mean 'model'"),
    ('model = "m"\n[[candidates]]\nweight = 2\n', "candidate 1 from .* has unknown key 'weight'; it takes model"),
    ('model = "m"\n[[candidates]]\nmodel = ""\n', r"candidate 1 from .* needs model = \"DIR\""),
    ('model = "m"\n[[candidates]]\nmodel = 5\n', r"candidate 1 from .* needs model = \"DIR\""),
    ('model = "m"\ncandidates = [1]\n', "candidate 1 from .* must be a table"),
    ('model = "m"\ncandidates = 5\n', "candidates from .* must be \\[\\[candidates\\]\\] tables"),
    ('model = "m"\n' + TOO_MANY, f"candidates: {MAX_CANDIDATES + 1} given, at most {MAX_CANDIDATES}"),
    ('model = "m"\n[[candidates]]\nmodel = "./m/"\n', r"candidate 1 \(./m/\) is the bundle directory of the "
                                                      r"primary model"),
    ('model = "m"\n[[candidates]]\nmodel = "c"\n[[candidates]]\nmodel = "c"\n',
     r"candidate 2 \(c\) is the bundle directory of candidate 1"),
    ('model = "m"\nshadow_topic = "ticks"\n', "shadow_topic 'ticks' is also an input topic"),
    ('model = "m"\nshadow_topic = "forecasts"\n', "shadow_topic 'forecasts' is also the output_topic"),
    ('model = "m"\nshadow_topic = "ticks.dlq"\n', "shadow_topic 'ticks.dlq' is also the dead_letter_topic"),
    ('model = "m"\nshadow_topic = "a b"\n', "shadow_topic 'a b' is not a Kafka topic name"),
    ('model = "m"\ninput_topics = ["o.shadow"]\noutput_topic = "o"\n[[candidates]]\nmodel = "c"\n',
     r"shadow_topic 'o.shadow' \(the default: <output_topic>.shadow\) is also an input topic"),
    ('model = "m"\noutput_topic = "' + "o" * 245 + '"\n[[candidates]]\nmodel = "c"\n', "is not a Kafka topic name"),
])
def test_candidate_and_shadow_mistakes_are_named_in_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig.load(write(tmp_path, text), env={})
    assert "\n" not in str(err.value)


def test_a_bad_candidate_flag_or_variable_is_one_line_through_the_cli(tmp_path, capsys):
    assert main(["config", "check", str(write(tmp_path, 'model = "m"\nshadow_topic = "forecasts"\n')),
                 "--ignore-env"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "tickcast: error: shadow_topic 'forecasts' is also the output_topic; the candidates' forecasts need a topic "
        "of their own: set shadow_topic = \"NAME\""]


def test_the_flag_definition_is_shared(tmp_path):
    """The one ``--candidate`` definition, for a command without RunConfig (its own help)."""
    p = argparse.ArgumentParser()
    add_candidate_arg(p, help="a candidate bundle to backtest beside --model")
    assert p.parse_args(["--candidate", "a", "--candidate", "b"]).candidates == ["a", "b"]
    assert p.parse_args([]).candidates is None
    assert "a candidate bundle to backtest" in p.format_help()


def test_config_check_reports_the_candidates_and_a_model_version_twice(tmp_path, bundle, bundle2, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(bundle.path, copy)
    path = write(tmp_path, f'model = "{bundle.path}"\ncheckpoint_uri = ""\n[[candidates]]\nmodel = "{bundle2.path}"\n'
                           f'[[candidates]]\nmodel = "{tmp_path / "elsewhere"}"\n')
    assert main(["config", "check", str(path), "--ignore-env"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f'  candidates = [{{"model": "{bundle2.path}"}}, {{"model": "{tmp_path / "elsewhere"}"}}]' in out
    assert '  shadow_topic = "forecasts.shadow"' in out
    at = out.index("models: a primary and 2 candidate(s), the candidates' forecasts to forecasts.shadow")
    assert out[at + 1:at + 4] == [f"  model: {bundle.path} (model version {bundle.model_version})",
                                  f"  candidate 1: {bundle2.path} (model version {bundle2.model_version})",
                                  f"  candidate 2: {tmp_path / 'elsewhere'} (not loaded here: model bundle "
                                  f"{tmp_path / 'elsewhere'} does not exist; create one with `tickcast train --out "
                                  f"{tmp_path / 'elsewhere'}`)"]
    path.write_text(f'model = "{bundle.path}"\ncheckpoint_uri = ""\n[[candidates]]\nmodel = "{copy}"\n')
    assert main(["config", "check", str(path), "--ignore-env"]) == 1
    assert (f"models: NOT startable: candidate 1 is model version {bundle.model_version}, the same as model; "
            "each model runs once") in capsys.readouterr().out.splitlines()


@pytest.fixture
def logging_restored():
    """`tickcast run` in-process configures the tickcast and kafka loggers onto this test's captured stderr:
    put them back, or a later test's kafka client threads log into a closed stream."""
    loggers = [logging.getLogger(name) for name in ("tickcast", "kafka", "kafka.net.selector")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, (handlers, level, propagate) in zip(loggers, saved):
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)


@pytest.mark.parametrize("which", ["primary", "candidate", "missing"])
def test_a_candidate_the_run_cannot_start_with_is_one_line_at_start(tmp_path, bundle, bundle2, capsys, which,
                                                                     logging_restored):
    """Where `tickcast run` loads its bundles, before it listens or connects: one line, exit 2."""
    copy = tmp_path / "copy"
    shutil.copytree(bundle2.path if which == "candidate" else bundle.path, copy)
    candidates = {"primary": [copy], "candidate": [bundle2.path, copy], "missing": [tmp_path / "none"]}[which]
    argv = ["run", "--model", str(bundle.path), "--checkpoint-uri", "", "--bootstrap-servers", "127.0.0.1:1",
            "--metrics-address", "127.0.0.1:0"]
    for c in candidates:
        argv += ["--candidate", str(c)]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("tickcast: error: candidate "), err
    assert {"primary": f"candidate 1 ({copy}) is model version {bundle.model_version}, the same as the primary "
                       f"model; each model runs once",
            "candidate": f"candidate 2 ({copy}) is model version {bundle2.model_version}, the same as candidate 1",
            "missing": f"candidate 1: model bundle {tmp_path / 'none'} does not exist"}[which] in err[0]
