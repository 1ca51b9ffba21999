"""Running a plan: skip what is finished, resume what was killed, time every stage.

A stage's *fingerprint* is its command line (or a function stage's settings) and the fingerprints
of the stages it reads. ``OUT/pipeline.json`` records, per stage, the fingerprint it last ran with,
whether it finished and how long it took. A stage is skipped when it finished with the same
fingerprint and its output exists; a training stage that started with the same fingerprint and did
not finish (the run was killed) resumes from its last Trainer checkpoint (``--resume``); anything
else runs from scratch, after the stale Trainer checkpoints of another fingerprint are removed.
A changed setting therefore reruns exactly its stage and those that read it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from afmrl.io import fingerprint, write_json_atomic

from .plan import Stage

STATE_FILE = "pipeline.json"


def load_state(out: Path) -> dict[str, Any]:
    try:
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def stage_fingerprints(plan: Sequence[Stage]) -> dict[str, str]:
    """Stage name -> fingerprint, in plan order."""
    prints: dict[str, str] = {}
    for stage in plan:
        prints[stage.name] = fingerprint(list(stage.argv), [prints[r] for r in stage.reads])
    return prints


def _clock(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec:02d} s" if minutes else f"{sec} s"


def run_plan(
    plan: Sequence[Stage], out: Path, command: Callable[[list[str]], int], rerun: str
) -> int:
    """Run ``plan`` (``command(argv)`` runs an ``afmrl`` command and returns its exit status);
    returns 0, or the exit status of the stage that failed. ``rerun`` is the command line to
    print when a stage stops."""
    prints = stage_fingerprints(plan)
    old = load_state(out)
    state = {s.name: old[s.name] for s in plan if s.name in old}
    start = time.perf_counter()
    for i, stage in enumerate(plan, 1):
        head = f"[pipeline] {i}/{len(plan)} {stage.name}"
        fp, done = prints[stage.name], state.get(stage.name, {})
        if done.get("fingerprint") == fp and done.get("finished") and Path(stage.output).exists():
            print(f"{head}: finished earlier with the same settings, skipped", flush=True)
            continue
        argv = list(stage.argv)
        resumed = False
        if stage.trains:
            checkpoints = Path(f"{stage.output}.checkpoints")
            if done.get("fingerprint") == fp and any(checkpoints.glob("checkpoint-*")):
                argv.append("--resume")
                resumed = True
            else:
                shutil.rmtree(checkpoints, ignore_errors=True)
        what = "(a function of afmrl.pipeline)" if stage.run else f"afmrl {shlex.join(argv)}"
        print(f"{head}{' (resuming)' if resumed else ''}: {what}", flush=True)
        state[stage.name] = {"fingerprint": fp, "finished": False}
        write_json_atomic(out / STATE_FILE, state)
        t0 = time.perf_counter()
        if stage.run is not None:
            stage.run()
            rc = 0
        else:
            rc = command(argv)
        if rc:
            print(f"[pipeline] stopped in stage {i} ({stage.name}); rerun `{rerun}` to continue "
                  "where it stopped", flush=True)  # fmt: skip
            return rc
        seconds = time.perf_counter() - t0
        state[stage.name] = {
            "fingerprint": fp, "finished": True, "seconds": round(seconds, 1), "resumed": resumed,
        }  # fmt: skip
        write_json_atomic(out / STATE_FILE, state)
        print(f"{head}: done in {_clock(seconds)} (run so far {_clock(time.perf_counter() - start)})",
              flush=True)  # fmt: skip
    return 0
