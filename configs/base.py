"""Defaults shared by every experiment: the source study's hyperparameters, with the
fine-tuning settings that held up in our studies (Mosbach et al. 2021): 10% warm-up for
downstream training and early stopping on validation (why: docs/benchmarks-studies.md,
"Defaults after the screening and seed 0").

Experiment configs import `get_base_config()` and override what differs. Every field
can be overridden on the command line: `--config.compression.starting_rate=0.3`.
"""

import ml_collections


def data_config(**kwargs) -> ml_collections.ConfigDict:
    """Where a dataset comes from; `format` picks the reader (see theseus_jax.data)."""
    d = ml_collections.ConfigDict(
        {
            "format": "germeval",  # germeval | mimic | nohate | nohate_lm | table | text | fortunes
            "train_path": "",  # file (or folder for mimic/fortunes)
            "test_path": "",  # optional; without it the train file is split 80/20
            # Optional; without it a stratified validation_share of the training examples is
            # held out. Selection, early stopping and learning-rate choice use validation only.
            "validation_path": "",
            "text_column": "text",  # table / nohate formats
            "label_column": "label",
            "label_map": "",  # "a=1,b=0" for nohate / table labels
            "topics": "",  # fortunes: "pos1+pos2/neg1+neg2"
            "test_share": 0.2,
            "validation_share": 0.1,
            "split_seed": 0,  # test/validation splits and subsampling: the same for every seed and model
            "max_examples": 0,  # 0 = all; small values make quick runs
        }
    )
    d.update(kwargs)
    return d


def stage_config(**kwargs) -> ml_collections.ConfigDict:
    """One training stage (LM or downstream)."""
    d = ml_collections.ConfigDict(
        {
            "epochs": 1,
            "batch_size": 16,
            "eval_batch_size": 32,
            "learning_rate": 2e-5,
            # A learning-rate set, e.g. "2e-5,5e-5,1e-4": one run per rate and seed, the rate
            # chosen per seed on validation; empty = just learning_rate. Give every model of a
            # comparison the same set (same tuning budget).
            "learning_rates": "",
            "warmup_ratio": 0.0,
            "weight_decay": 0.01,
            "max_grad_norm": 1.0,
            "max_length": 512,
            "buckets": (32, 64, 128, 256, 512),
            "max_steps": 0,  # > 0: training (and its schedules) ends after this many steps, if the epochs hold more
            # What a plain (non-Theseus) model trains: all | all_but_word_embeddings (the
            # table frozen; measured in docs/benchmarks-training-step.md, C and K).
            # Theseus runs follow compression.trainable.
            "trainable": "all",
        }
    )
    d.update(kwargs)
    return d


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # lm_baseline | lm_compress | cls_baseline | cls_compress | series
    config.pipeline = "series"
    # Every stage runs once per seed ("0,1,2"); reports give per-seed values, mean ± std and
    # intervals. `seed` is the current run's seed, set from `seeds` by the pipelines.
    config.seeds = "0"
    config.seed = 0
    # A stage with several learning rates (`<lm|cls>.learning_rates`): "per_seed" runs every
    # seed at every rate and keeps per seed the best on validation; "first_seed" runs the first
    # seed at every rate and each later seed only at the rate the first chose for that stage
    # (the same rule for every model, a fraction of the runs).
    config.rate_choice = "per_seed"
    # "validation": best step, early stopping, exported best model, learning rate and grid
    # ranking chosen on validation data, test evaluated at the chosen steps. "test": the
    # source study's protocol (choices on the test set; optimistic), named in every report.
    config.selection = "validation"
    # 95% bootstrap intervals of test metrics and retained performance.
    config.bootstrap = ml_collections.ConfigDict({"resamples": 1000, "seed": 0})

    config.model = ml_collections.ConfigDict(
        {
            "path": "packaged",  # HF checkpoint folder or Hub ID org/name[@rev]; "packaged" = the bundled all-MiniLM-L6-v2
            "tokenizer_path": "",  # defaults to model.path
            # Non-empty: a randomly initialised BERT with these BertConfig fields (tests, timing).
            "random_config": ml_collections.ConfigDict(),
            "dtype": "float32",  # compute dtype; "bfloat16" on GPUs (weights stay float32)
            "remat": False,  # recompute layer activations in the backward pass (long sequences)
        }
    )
    # What cls_baseline trains: predecessor | truncated | a checkpoint folder.
    config.cls_model = "predecessor"

    config.compression = ml_collections.ConfigDict(
        {
            "num_successor_layers": 6,
            # A depth sweep, e.g. "6,4,3": every compressing or truncated cls_* stage of the
            # series runs once per depth (cls_compress_L4, ...), beside one teacher; the report
            # adds the Pareto table and figure with measured speed-ups. "" = num_successor_layers.
            "depths": "",
            "init_offset": "0",  # "0".."r-1" (lower..upper layer of each module) or "original"
            # Where those layers come from: the predecessor being compressed, or (diagnosis) the
            # pretrained model.path it was fine-tuned from, when compressing a fine-tuned checkpoint.
            "successor_init": "predecessor",  # predecessor | pretrained
            "schedule": "curriculum",  # curriculum | constant
            "starting_rate": 0.1,  # b
            "ratio_replacement_changes": 0.85,  # p reaches 1 after this share of the steps
            "constant_rate": 0.5,  # constant schedule's p
            # p = 1 from this step on (both schedules; the successor then trains alone). 0: the
            # curriculum reaches 1 at ratio_replacement_changes of the steps, a constant p stays.
            "replacing_steps": 0,
            # The same in epochs (may be fractional): a recipe that means the same at any data
            # size. 0 = unset; set at most one of replacing_steps and replacing_epochs.
            "replacing_epochs": 0.0,
            # What trains besides the successor: successor | successor_embeddings_heads
            "trainable": "successor",
        }
    )

    config.lm = ml_collections.ConfigDict(
        {"data": data_config(format="text"), "mlm_probability": 0.15, **stage_config(epochs=50)}
    )
    config.cls = ml_collections.ConfigDict(
        {"data": data_config(), "metric": "macro_f1", **stage_config(epochs=15, warmup_ratio=0.1)}
    )

    config.series = ml_collections.ConfigDict(
        {
            # Stages in order; lm_* fine-tune the MLM, cls_* train the downstream classifier on
            # the predecessor (from lm_baseline), the successor (from lm_compress) and the
            # truncated predecessor (bottom n layers, the "6L fine-tuning" baseline).
            "stages": "lm_baseline,lm_compress,cls_predecessor,cls_successor,cls_truncated",
        }
    )

    # Data parallelism: batches split over this many devices (0 = all); the global batch
    # size stays `batch_size` whatever the device count.
    config.num_devices = 0
    # Gradient accumulation: each batch is split into this many micro-batches.
    config.accumulation_steps = 1

    config.eval_every_steps = 0
    config.checkpoint_every_steps = 200
    # Step metrics reach the host in chunks of this many steps (the loop never waits per step).
    config.log_every_steps = 50
    config.keep_checkpoints = 2
    # Stop (exit 2, checkpoint saved, resumable) once the process's resident memory passes this
    # many GB; 0 = no cap. Checked at progress updates and after evaluations, so the peak
    # may pass it by what one step or evaluation adds. Not part of the run's identity: a rerun
    # with another cap resumes.
    config.max_memory_gb = 0.0
    # A finished run (its report.json written) needs no checkpoints: best/ holds the selected
    # model. They are removed (1-3 GB per e5-small run) unless this is True.
    config.keep_final_checkpoints = False
    # A run ends after `patience` validations in a row without a gain above min_delta (0 = off);
    # Theseus runs count only those after the replacement phase (p = 1).
    config.early_stopping = ml_collections.ConfigDict({"patience": 3, "min_delta": 0.0})
    # Task distillation, loss (1 - alpha) CE + alpha T^2 KL(teacher || student) at temperature
    # T: the series' *_kd stages learn from the same seed's cls_predecessor; a single
    # cls_baseline / cls_compress run from `teacher` (a classifier folder). alpha 0 = plain CE.
    config.distillation = ml_collections.ConfigDict({"alpha": 0.0, "temperature": 1.0, "teacher": ""})
    return config
