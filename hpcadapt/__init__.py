"""hpcadapt: domain adaptation of LLMs on Slurm (CPT -> SFT -> DPO/ORPO -> SLERP -> benchmark)."""
__version__ = "0.1.0"
