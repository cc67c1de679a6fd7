"""Evaluate models as a Ray job: `s2o eval` with its quality pass on the cluster's Ray Data actors.

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . --entrypoint-num-gpus 1 -- \\
        python jobs/evaluate.py --data s3://bucket/store --out report \\
            --model teacher=s3://bucket/runs/teacher/bundle@ddim:50 --model acd=s3://bucket/runs/acd/bundle@lcm:1,2,4,8 \\
            --workers 4

Quality runs on --workers actors per model (one GPU each where the cluster has GPUs); latency and
throughput are timed in this driver (give it a GPU with --entrypoint-num-gpus 1 so they are GPU figures).
--out is a folder on the driver's machine.
"""

import os
import sys

from s2o_platform.cli import app

if __name__ == "__main__":
    # RAY_ADDRESS is set inside a Ray job; an --address given on the command line still wins
    app(["eval", "--address", os.environ.get("RAY_ADDRESS", "auto"), *sys.argv[1:]])
