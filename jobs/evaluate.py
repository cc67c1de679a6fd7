"""Evaluate models as a Ray job: `s2o eval` with its quality pass on the cluster's Ray Data actors.
    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . --entrypoint-num-gpus 1 -- \\
        python jobs/evaluate.py --data s3://bucket/store --out s3://bucket/reports/run1 \\
            --model teacher=s3://bucket/runs/teacher/bundle@ddim:50 --model acd=s3://bucket/runs/acd/bundle@lcm:1,2,4,8 \\
            --workers 4
Quality runs on --workers actors per model (one GPU each where the cluster has GPUs); latency and
throughput are timed in this driver (give it a GPU with --entrypoint-num-gpus 1 so they are GPU figures).
--out is a folder on the driver's machine, or an s3:// prefix: the report is then written to a
temporary folder and uploaded when the evaluation ends (the driver's disk goes with its pod).
"""

import os
import sys
import tempfile
from pathlib import Path

from s2o_platform import storage
from s2o_platform.cli import app


def upload_folder(local: Path, uri: str) -> None:
    fs, root = storage.resolve(uri)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.put_file_atomic(str(path), fs, storage.join(root, path.relative_to(local).as_posix()))
    print(f"[eval] report uploaded to {uri}", file=sys.stderr)


def main(argv: list[str]) -> None:
    # RAY_ADDRESS is set inside a Ray job; an --address given on the command line still wins
    args = ["eval", "--address", os.environ.get("RAY_ADDRESS", "auto"), *argv]
    out = args.index("--out") + 1 if "--out" in args else None
    if out is None or not storage.is_uri(args[out]):
        app(args)
        return
    remote = args[out]
    with tempfile.TemporaryDirectory(prefix="s2o-report-") as local:
        args[out] = local
        try:
            code = app(args, standalone_mode=False)
        finally:  # a partial report (exit 1: some rows failed) is still worth keeping
            upload_folder(Path(local), remote)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
