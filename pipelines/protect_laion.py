"""Entry point for Ray jobs:

    ray job submit --address http://HEAD:8265 --runtime-env deploy/runtime_env.yaml -- \\
        python pipelines/protect_laion.py s3://bucket/laion/raw s3://bucket/laion/protected --preset paper \\
        --partition cluster --num-actors 8 --gpus-per-actor 1

Same options as `mempipe protect` (the same parser). Inside a Ray job it joins the cluster
it was submitted to (RAY_ADDRESS); elsewhere it starts a local Ray. Progress goes to the
job log; failures exit non-zero; the run record lands at OUTPUT/mempipe_run.json.
"""
import sys

from mempipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["protect", *sys.argv[1:]]))
