# The SDK worker image for remote runs of tda on GPUs (Dataflow's --sdk_container_image,
# the Spark / Flink configs' environment_config): Beam's Python SDK image + torch with
# CUDA + faiss-gpu + tda and the steerling package.
#
#   make sdist                       # writes dist/tda-<version>.tar.gz
#   docker build -f docker/worker.Dockerfile -t "$TDA_WORKER_IMAGE" .
#   docker push "$TDA_WORKER_IMAGE"
#
# Beam and Python versions must be the submitting environment's (a Beam job refuses SDK
# workers of another version); tests/jobs/test_worker_image.py checks both against the
# installed apache-beam, and the torch / steerling pins against the Makefile.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1

# PyPI's Linux torch wheels carry the CUDA 12 runtime as nvidia-* wheels; the NVIDIA
# driver comes from the host (Dataflow: worker_accelerator=...;install-nvidia-driver).
RUN pip install torch==2.13.0

# tda from its sdist, with faiss-gpu (extra gpu), gcsfs and s3fs, and steerling's imports.
ARG TDA_SDIST=dist/tda-0.1.0.tar.gz
COPY ${TDA_SDIST} /tmp/tda.tar.gz
RUN pip install "tda[gpu,gcs,s3,steerling] @ file:///tmp/tda.tar.gz" \
 && rm /tmp/tda.tar.gz
# steerling declares Python >= 3.13 and pins old torch, yet runs on 3.11 with the torch
# above: take the package alone.
RUN pip install --no-deps --ignore-requires-python steerling==0.2.0

# Fail the build, not the job, when the worker cannot import what the pipelines need.
RUN python -c "import faiss, torch, steerling, tda.pipeline.build; print('faiss', faiss.__version__, 'torch', torch.__version__)"

ENTRYPOINT ["/opt/apache/beam/boot"]
