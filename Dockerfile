# GPU image for cluster nodes: CUDA PyTorch base + polyp-synth, usable as the Ray image for
# `ray job submit` (the working dir is uploaded by Ray; the package is already installed here).
FROM pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/polyp-synth
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install -e . 
COPY prompts ./prompts
COPY masks ./masks
COPY jobs ./jobs

# Ray head or worker: `ray start --head` / `ray start --address=...`; jobs run `polyp-synth run JOB.yaml`.
CMD ["polyp-synth", "--help"]
