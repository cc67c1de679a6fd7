"""`s2o train gan` as a Ray job, with the same arguments:

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_gan.py --config configs/paper/gan.yaml ... --out s3://bucket/runs/gan

Inside a Ray job RAY_ADDRESS is set, so training runs on that cluster; the same --out resumes.
"""

import sys

from s2o_platform.cli import app

if __name__ == "__main__":
    app(["train", "gan", *sys.argv[1:]])
