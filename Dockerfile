# The emokp-ray cluster image: the official Ray image of the pinned Ray version plus this project.
# Every node of a cluster (head, workers, the RayJob submitter) runs it, so `python` there has Ray,
# torch and emokp_ray, and the job entrypoints are at /home/ray/emokp-ray/jobs/.
#
#   docker build -t emokp-ray:0.1.0-cpu .                                  # CPU nodes (torch CPU build)
#   docker build --build-arg RAY_FLAVOR=gpu -t emokp-ray:0.1.0-gpu .       # NVIDIA GPU nodes (torch CUDA build)
#   docker tag emokp-ray:0.1.0-gpu REGISTRY/emokp-ray:0.1.0-gpu && docker push REGISTRY/emokp-ray:0.1.0-gpu
#
# RAY_VERSION must equal the ray pin in pyproject.toml (tests/test_dockerfile.py checks it; the build
# checks the image's Ray too): the nodes, the job driver and the `ray job submit` on your machine must
# run the same Ray. RAY_FLAVOR picks the base image's platform tag: cpu, gpu (Ray's alias of its
# default CUDA build) or a CUDA version such as cu121 or cu128 (see hub.docker.com/r/rayproject/ray).
# EXTRAS: the project's optional dependencies to install ("detect": OpenCV for faces in photos).
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG RAY_FLAVOR=cpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${RAY_FLAVOR}

ARG RAY_VERSION
ARG RAY_FLAVOR
ARG EXTRAS=detect
# Where torch comes from on CPU images: PyTorch's CPU index (PyPI's default torch is the CUDA build,
# gigabytes that a CPU node never uses). GPU images take PyPI's default CUDA build.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /home/ray/emokp-ray
COPY --chown=ray:users . .

# The project and its dependencies as pyproject.toml declares them (Ray is already in the image at
# the pinned version, so pip keeps it); nothing else is named here.
RUN if [ "${RAY_FLAVOR}" = "cpu" ]; then index="--extra-index-url ${TORCH_CPU_INDEX}"; else index=""; fi \
    && pip install --no-cache-dir ${index} ".[${EXTRAS}]" \
    && python -c "import emokp_ray, ray, torch; assert ray.__version__ == '${RAY_VERSION}', ray.__version__; print('emokp-ray image: ray', ray.__version__, 'torch', torch.__version__)"

ENV RAY_DATA_DISABLE_PROGRESS_BARS=1 \
    PYTHONUNBUFFERED=1
