# atelier: one image for every process (migrate, worker, scheduler, ops, mock-channels).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only torch first, from PyTorch's CPU index (the default index would bring the CUDA build);
# its own layer, so code changes do not download it again.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

# The project, installed (not editable): the atelier command, the packages, the migrations.
COPY . /src
RUN pip install /src && rm -rf /src

RUN useradd --create-home --uid 10001 atelier
USER atelier
WORKDIR /home/atelier

# The ops server's port; workers and the scheduler listen on nothing.
EXPOSE 9180
CMD ["atelier", "--help"]
