"""The process that measures one run's identities (``python -m pspo_repro.analysis.audit.child REQUEST``),
started by :func:`pspo_repro.analysis.audit.measurement.measure_run_in_process` with one GPU visible.

The request (JSON) names the run's settings, the steps, the work folder and where to write the result: the
summary, or the error and its traceback when the measurement raises (the exit status is then 1)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def main(request_path: str) -> int:
    from pspo_repro.analysis.audit.measurement import measure_run
    from pspo_repro.study.console import quiet_libraries
    from pspo_repro.training.settings import TrainSettings

    request = json.loads(Path(request_path).read_text())
    result = Path(request["result"])
    quiet_libraries()
    try:
        settings = TrainSettings.from_dict(request["settings"])
        payload: dict = {"result": measure_run(settings, request["steps"], Path(request["work_dir"]))}
        status = 0
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it with the run's name
        payload = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        status = 1
    partial = result.with_suffix(".partial")
    partial.write_text(json.dumps(payload))
    os.replace(partial, result)  # whole or absent: a process killed while writing leaves no torn result
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
