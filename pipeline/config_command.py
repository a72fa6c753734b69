"""``tickcast config check FILE``: a run config validated as ``tickcast run`` would load it, then what only this
machine can tell (the models' bundles, the checkpoint store's permissions)."""

from __future__ import annotations

import json

from pipeline.candidates import describe_models
from pipeline.checkpoint import CheckpointError, group_store, redact_uri
from pipeline.config import RunConfig


def check_config(path: str, ignore_env: bool = False) -> int:
    """Print the config as it loads (secrets masked), its models, and whether its checkpoint store is writable.
    0: startable; 1: something found here stops a run (the models, the store). A config that does not load
    raises its one-line error before anything is printed."""
    cfg = RunConfig.load(path, env={} if ignore_env else None)
    print(f"{path}: OK")
    for k, v in cfg.redacted().items():
        print(f"  {k} = {json.dumps(v)}")
    code = 0
    if cfg.candidates:
        lines, problem = describe_models(cfg.model, [c.model for c in cfg.candidates])
        print(f"models: a primary and {len(cfg.candidates)} candidate(s), the candidates' forecasts to "
              f"{cfg.shadow_output_topic}")
        print("\n".join(f"  {line}" for line in lines))
        if problem:
            print(f"models: NOT startable: {problem}")
            code = 1
    if not cfg.checkpoint_uri:
        print("checkpoint store: off (checkpoint_uri is empty)")
        return code
    try:  # the group's folder, exactly as `tickcast run` derives it
        how = group_store(cfg.checkpoint_uri, cfg.group_id, cfg.checkpoint_keep,
                          cfg.checkpoint_key()).check_writable()
    except CheckpointError as exc:
        print(f"checkpoint store: NOT writable: {exc}")
        return 1
    print(f"checkpoint store: writable: {redact_uri(cfg.checkpoint_uri)}, group {cfg.group_id} ({how})")
    return code
