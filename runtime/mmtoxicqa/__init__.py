"""MM-TOXIC-QA: the multimodal toxicity benchmark (dataset builder, external loaders, metrics, runner).

Torch-free: a run on a PyTorch model imports the model zoo lazily, inside the CLI's --model branch only.
"""
from runtime.mmtoxicqa.builder import BuildConfig, build_dataset, cached_dataset
from runtime.mmtoxicqa.dataset import dataset_info, load_dataset
from runtime.mmtoxicqa.external import load_figstep, load_mmsafetybench, load_rtp_jsonl
from runtime.mmtoxicqa.items import CONDITIONS, SPLITS, TOXIC_CONDITIONS, Item
from runtime.mmtoxicqa.runner import RunSettings, run_benchmark

__all__ = ["BuildConfig", "build_dataset", "cached_dataset", "dataset_info", "load_dataset", "load_figstep",
           "load_mmsafetybench", "load_rtp_jsonl", "CONDITIONS", "SPLITS", "TOXIC_CONDITIONS", "Item",
           "RunSettings", "run_benchmark"]
