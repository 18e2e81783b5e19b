from vaswani.training.arguments import TrainArguments, parse_arguments
from vaswani.training.export import save_for_hub
from vaswani.training.run import run, run_warm_start_comparison
from vaswani.training.trainer_batching import (
    TokenBatchSeq2SeqTrainer,
    TokenBatchTrainer,
    TokenBatchTrainerMixin,
    token_batch_sampler,
)

__all__ = [
    "TrainArguments",
    "parse_arguments",
    "run",
    "run_warm_start_comparison",
    "save_for_hub",
    "TokenBatchTrainer",
    "TokenBatchSeq2SeqTrainer",
    "TokenBatchTrainerMixin",
    "token_batch_sampler",
]
