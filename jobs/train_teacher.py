"""Train the teacher as a Ray job: the same arguments as `s2o train teacher`.

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_teacher.py --config configs/paper/teacher.yaml --data s3://bucket/store --out s3://bucket/runs/teacher

Inside a Ray job RAY_ADDRESS is set, so training runs on that cluster. Submitting again with the
same --out resumes from the latest checkpoint.
"""

import sys

from s2o_platform.cli import app

if __name__ == "__main__":
    app(["train", "teacher", *sys.argv[1:]])
