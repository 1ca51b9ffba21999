# Environment shared by the quickstart, the tests and CI: offline, no telemetry.
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export GRADIO_ANALYTICS_ENABLED=False
export HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
# faiss/torch OpenMP threads busy-wait otherwise, which slows shared small machines 2-3x.
export OMP_WAIT_POLICY=PASSIVE
