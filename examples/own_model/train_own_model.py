# %% [markdown]
# # Your own Keras model, served by tickcast
#
# A custom recurrent model (GRU -> LayerNormalization -> Dense(2): the log return over the next 1 and
# the next 10 ticks of the same instrument) trained here, on the features tickcast computes, then
# bundled, backtested and run live with the `tickcast` command line. Run it top to bottom
# (`python examples/own_model/train_own_model.py`) or cell by cell (`# %%`) in an editor.
#
# Sizes come from the environment, so the same script runs in seconds as a test:
# OWN_MODEL_WORKDIR (default .own_model), OWN_MODEL_TICKS (200000), OWN_MODEL_INSTRUMENTS (20),
# OWN_MODEL_EPOCHS (4), OWN_MODEL_HIDDEN (16), OWN_MODEL_LIVE (1; 0 skips the live step).

# %%
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

WORK = Path(os.environ.get("OWN_MODEL_WORKDIR", ".own_model"))
TICKS = int(os.environ.get("OWN_MODEL_TICKS", "200000"))
INSTRUMENTS = int(os.environ.get("OWN_MODEL_INSTRUMENTS", "20"))
EPOCHS = int(os.environ.get("OWN_MODEL_EPOCHS", "4"))
HIDDEN = int(os.environ.get("OWN_MODEL_HIDDEN", "16"))
LIVE = os.environ.get("OWN_MODEL_LIVE", "1") != "0"
WINDOW = 64  # ticks per training sequence
FEATURES = ["log_return", "log_gap_seconds", "log_size", "relative_spread"]  # the model's inputs, in order
OUTPUTS = "h1:1,h10:10"  # what each model output forecasts: name:horizon (`tickcast bundle --outputs`)
WORK.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tickcast(*args: str, background: bool = False, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """`tickcast ARGS` (the same as the console script; this interpreter, so it works from a checkout too);
    ``background``: started, not waited for."""
    print("$ tickcast " + " ".join(args) + (" &" if background else ""), flush=True)
    cmd = [sys.executable, "-m", "pipeline.cli", *args]
    if background:
        return subprocess.Popen(cmd, **popen)
    return subprocess.run(cmd, check=True)


# %% [markdown]
# ## 1. Ticks
# Synthetic ticks from `tickcast generate`; the first 70 % (by time) train, the rest are for the backtest
# and the live run. Real data works the same way: any file or directory `tickcast backtest --input` reads.

# %%
tickcast("generate", "--instruments", str(INSTRUMENTS), "--ticks", str(TICKS), "--seed", "7",
         "--out", str(WORK / "ticks.parquet"))
ticks = pq.read_table(WORK / "ticks.parquet")
ts = ticks.column("ts").to_numpy()
cut_ts = int(np.quantile(ts, 0.7))
train_ticks = ticks.filter(ts < cut_ts)
test_ticks = ticks.filter(ts >= cut_ts)
pq.write_table(train_ticks, WORK / "train.parquet")
pq.write_table(test_ticks, WORK / "test.parquet")
print(f"{train_ticks.num_rows:,} ticks to train on, {test_ticks.num_rows:,} to test on")

# %% [markdown]
# ## 2. Features and targets, exactly as tickcast computes them
# `sequences_from_table` runs a tick table through the same validation, per-instrument grouping and
# feature code the streaming operator runs per micro-batch. `Normalisation.fit` on these ticks is what
# `tickcast bundle --fit-normalisation-on train.parquet` fits, so the model learns on the inputs it will
# be served, and its outputs are de-normalised with the statistics it was trained against.

# %%
from operators.features import FEATURE_NAMES, Normalisation  # noqa: E402
from operators.outputs import parse_outputs, targets  # noqa: E402
from operators.training import sequences_from_table  # noqa: E402

outputs = parse_outputs(OUTPUTS)
seq = sequences_from_table(train_ticks)  # valid ticks, grouped per instrument, in each instrument's order
raw = seq.raw_features[:, [FEATURE_NAMES.index(name) for name in FEATURES]]
y = targets(seq.price, seq.group_starts, outputs)  # (n, 2): log return over 1 and 10 ticks; NaN at the ends
norm = Normalisation.fit(raw, y)
x = norm.apply(raw)  # normalised and clipped, float32
y_norm = (y - norm.target_mean) / norm.target_std


def windows(x: np.ndarray, y: np.ndarray, group_starts: np.ndarray, window: int):
    """Each instrument's sequence cut into windows of ``window`` ticks, zero-padded; weight 1 where every
    target is known. Windows start from a zero state, as tickcast's own training does."""
    bounds = np.append(group_starts, len(x))
    xs, ys, ws = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for s in range(a, b, window):
            e = min(s + window, b)
            xw = np.zeros((window, x.shape[1]), np.float32)
            yw = np.zeros((window, y.shape[1]), np.float32)
            ww = np.zeros(window, np.float32)
            known = np.isfinite(y[s:e]).all(axis=1)
            xw[: e - s] = x[s:e]
            yw[: e - s] = np.where(np.isfinite(y[s:e]), y[s:e], 0.0)
            ww[: e - s] = known
            xs.append(xw)
            ys.append(yw)
            ws.append(ww)
    return np.stack(xs), np.stack(ys), np.stack(ws)


xw, yw, ww = windows(x, y_norm, seq.group_starts, WINDOW)
print(f"{len(xw):,} training windows of {WINDOW} ticks, {len(FEATURES)} features, {len(outputs)} targets")

# %% [markdown]
# ## 3. The model: any stack tickcast can serve (LSTM, GRU, SimpleRNN, Dense, LayerNormalization, ...)

# %%
import keras  # noqa: E402

keras.utils.set_random_seed(0)
inputs = keras.Input((None, len(FEATURES)), name="ticks")
h = keras.layers.GRU(HIDDEN, return_sequences=True)(inputs)
h = keras.layers.LayerNormalization()(h)
forecast = keras.layers.Dense(len(outputs))(h)
model = keras.Model(inputs, forecast)
model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
model.fit(xw, yw, sample_weight=ww, batch_size=32, epochs=EPOCHS, verbose=2)
model.save(WORK / "model.keras")

# %% [markdown]
# ## 4. Bundle it: the .keras file, the feature names in order, what each output means, and the ticks
# the normalisation is fitted on (the same ticks as above).

# %%
tickcast("bundle", "--keras", str(WORK / "model.keras"), "--features", ",".join(FEATURES),
         "--outputs", OUTPUTS, "--fit-normalisation-on", str(WORK / "train.parquet"), "--out", str(WORK / "bundle"))
meta = json.loads((WORK / "bundle" / "bundle.json").read_text())
print(json.dumps(meta["normalisation"], indent=1)[:400])

# %% [markdown]
# ## 5. Backtest: the test ticks through the streaming operator in micro-batches, each output scored
# against its own realised log return (`backtest/summary.json`, `backtest/report.html`).

# %%
tickcast("backtest", "--input", str(WORK / "test.parquet"), "--model", str(WORK / "bundle"),
         "--out", str(WORK / "backtest"), "--quiet")
summary = json.loads((WORK / "backtest" / "summary.json").read_text())
for o in summary["outputs"]:
    print(f"{o['name']}: MAE {o['model']['mae']:.3e} vs random walk {o['random_walk']['mae']:.3e}, "
          f"R² vs random walk {o['r2_vs_random_walk']:+.4f}")

# %% [markdown]
# The operator serves what Keras computes: one instrument's whole test sequence through the Keras
# model itself (features as above, with the bundle's normalisation) gives the backtest's forecasts.

# %%
backtest = pq.read_table(WORK / "backtest" / "forecasts.parquet")
test_seq = sequences_from_table(test_ticks)
bundle_norm = Normalisation.from_dict(meta["normalisation"])
first = test_seq.instruments[0]
end = test_seq.group_starts[1] if len(test_seq.group_starts) > 1 else len(test_seq.order)
x_first = bundle_norm.apply(test_seq.raw_features[: end, [FEATURE_NAMES.index(n) for n in FEATURES]])
keras_out = np.asarray(model(x_first[None], training=False))[0] * bundle_norm.target_std + bundle_norm.target_mean
mine = backtest.filter(np.asarray(backtest.column("instrument").to_pylist()) == first).sort_by("seq")
served = np.column_stack([mine.column(f"forecast_{o.name}").to_numpy() for o in outputs])
gap = float(np.max(np.abs(served - keras_out)))
print(f"{first}: {len(served):,} forecasts, largest difference operator vs Keras {gap:.2e}")
assert gap <= 1e-4 * float(np.max(np.abs(keras_out))) + 1e-12, gap

# %% [markdown]
# ## 6. Live: an embedded Kafka-protocol broker, `tickcast run` consuming `ticks`, the test ticks replayed
# into it; forecasts (schema v2: `"forecasts": {"h1": ..., "h10": ...}`) arrive on `forecasts`.
# Against a real cluster, drop the broker and point `--bootstrap-servers` at it.

# %%
if LIVE:
    from kafka import KafkaConsumer

    broker = tickcast("broker", "--topics", "ticks,forecasts,ticks.dlq", "--partitions", "2", background=True,
                      stdout=subprocess.PIPE, text=True)
    address = broker.stdout.readline().strip()  # the broker prints where it listens
    run = tickcast("run", "--model", str(WORK / "bundle"), "--bootstrap-servers", address,
                   "--group-id", "own-model", "--checkpoint-uri", str(WORK / "checkpoints"),
                   "--metrics-address", "127.0.0.1:0", "--status-interval-s", "0", "--max-batch-ms", "20",
                   "--log-level", "warning", background=True)
    try:
        tickcast("replay", "--input", str(WORK / "test.parquet"), "--topic", "ticks",
                 "--bootstrap-servers", address, "--speed", "0", "--quiet")
        consumer = KafkaConsumer("forecasts", bootstrap_servers=address, auto_offset_reset="earliest",
                                 consumer_timeout_ms=1000)
        live, received, deadline = {}, 0, time.monotonic() + 120  # instrument -> its forecasts, in order
        while received < backtest.num_rows and time.monotonic() < deadline and run.poll() is None:
            for record in consumer:
                m = json.loads(record.value)
                live.setdefault(m["instrument"], []).append([m["forecasts"][o.name] for o in outputs])
                received += 1
        consumer.close()
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=30)
    # Each instrument's forecasts arrive in its ticks' order (one key, one partition): the same as the file's.
    ordered = backtest.sort_by("seq")
    same = 0
    for name in set(ordered.column("instrument").to_pylist()):
        part = ordered.filter(np.asarray(ordered.column("instrument").to_pylist()) == name)
        want = np.column_stack([part.column(f"forecast_{o.name}").to_numpy() for o in outputs])
        got = np.asarray(live.get(name, []))
        # Equal up to float32 rounding (micro-batches differ): within 1e-5 of the target's spread.
        same += len(got) == len(want) and bool(np.all(np.abs(got - want) <= 1e-5 * bundle_norm.target_std))
    instruments = len(set(ordered.column("instrument").to_pylist()))
    print(f"live: {received:,} forecasts received for {backtest.num_rows:,} backtested ticks; "
          f"{same} of {instruments} instruments' forecasts equal the backtest's")
    assert received == backtest.num_rows and same == instruments
