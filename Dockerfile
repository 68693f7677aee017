# The container image every step runs in on Vertex AI Pipelines / Kubeflow Pipelines (and the
# Beam workers on Dataflow, Flink or Spark via beam.sdk_container_image). TFX loads models/ and
# pipeline/ by import path (models.preprocessing.preprocessing_fn, models.model.run_fn,
# pipeline.dag.components), so this repository must be installed in it.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/mlpipe/mlpipe:$(git rev-parse --short HEAD) .
#   docker push REGION-docker.pkg.dev/PROJECT/mlpipe/mlpipe:...
#
# mlpipe needs Python >= 3.11 (tomllib). If the TFX image's Python is older, build with
#   --build-arg BASE=python:3.11-slim --build-arg INSTALL_LOCK=1
# which installs the exact pinned stack of requirements.lock instead.
ARG BASE=gcr.io/tfx-oss-public/tfx:1.16.0
FROM ${BASE}
ARG INSTALL_LOCK=0
WORKDIR /mlpipe
COPY requirements.lock ./
RUN python -c "import sys; assert sys.version_info >= (3, 11), 'mlpipe needs Python >= 3.11: build with --build-arg BASE=python:3.11-slim --build-arg INSTALL_LOCK=1'" \
 && if [ "$INSTALL_LOCK" = "1" ]; then pip install --no-cache-dir -r requirements.lock; fi
COPY setup.py ./
COPY models/ models/
COPY pipeline/ pipeline/
COPY data/ data/
COPY serving/ serving/
# --no-deps: the base image (or the lock above) already holds TFX 1.16 and its pinned stack.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
 && python -c "import models.model, pipeline.dag.components, pipeline.ops.deploy"
ENV TF_USE_LEGACY_KERAS=1
