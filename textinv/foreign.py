"""Other tools' names for textinv's settings, so an old flag or config key is answered with textinv's name.

People come from the diffusers example scripts (`examples/textual_inversion/textual_inversion.py` and its SDXL
twin), kohya's sd-scripts (`train_textual_inversion.py`, `sdxl_train_textual_inversion.py`, `gen_img.py`,
`finetune/make_captions.py`) and the
AUTOMATIC1111 web UI's Train tab (its `train_embedding` arguments), and type the names they know. The nearest
textinv name by spelling is often the wrong one (`--placeholder_token` is `--token`), so `NAMES` says what each is.
The table is data: `foreign_hint` reads it for the command line and for config files alike. Only what truly
corresponds is named; where textinv has no equivalent, the note says so (or how to get the same with what it has).
"""

from __future__ import annotations

_D = "the diffusers script's"
_K = "kohya's"
_DK = "the diffusers and kohya scripts'"
_W = "the web UI's"
_P = "the diffusers pipelines'"
_G = "kohya's gen_img's"

# (their epochs end in a short batch, so they round each epoch's steps up; textinv's sampler runs on into the next)
_ROUNDED = "it rounds each epoch's steps up, textinv the total: an epoch ends inside a batch here"
_ATTENTION = ("not needed: textinv's models use PyTorch's scaled-dot-product attention (SDPA), which is "
              "memory-efficient already")
_SAVE = "one setting for both: every N steps a checkpoint to resume from and that step's embedding"
_EMBEDS_ONLY = ("not needed: textinv saves only the learned vectors, never a copy of the model; load them into the "
                "unchanged base model (`textinv generate --embedding FILE`, or diffusers' load_textual_inversion)")
_TOKENIZER = "not needed: textinv uses the model's own tokenizer"
_NO_LOADER = ("not needed: textinv encodes each picture once before the first step and every step draws from those "
              "cached latents; there is no data loader")
_ADAM = ("--optimizer-args betas=B1,B2 eps=E: AdamW's own arguments; PyTorch's betas 0.9,0.999 and eps 1e-8 (the "
         "diffusers script's defaults) unless given")
_TINY_OPTIMIZER = ("not needed: textinv's optimizer holds only the new vectors (a few thousand numbers), so a "
                   "memory-saving optimizer or step saves nothing")
_SCHEDULES = ("textinv has the schedules of --lr-schedule (linear and cosine decay to 0 at the last step, "
              "cosine_with_restarts --lr-cycles times, polynomial to 1e-7 with --lr-power, each after "
              "--warmup-steps) and the web UI's stepped rate, --lr-steps; no other setting")
_PUSH = "textinv publishes with a command of its own, once the run is done: textinv push OUT --repo OWNER/NAME"
_KEEP = ("textinv saves by steps (--save-every N) and keeps the last --keep-checkpoints checkpoints (2 unless told); "
         "with --step-embeddings every saved step's embedding stays")
_RESUMED_COUNT = ("not needed: textinv train --out DIR --resume goes on from DIR's last checkpoint at its own step, "
                  "with the pictures' order and the learning-rate schedule where they were")
_DDP = ("textinv runs data-parallel through accelerate launch with its defaults: no DeepSpeed, no DDP settings (a few "
        "vectors need no sharding)")
_NO_TEXT_TO_IMAGE = ("textinv draws from text, redraws a picture (--init-image) or the part of it a mask marks "
                     "(--mask): no ControlNet or guide image")
_LORA = "write <lora:NAME:0.8> in the prompt and give the folder of LoRA files as --lora-dir"
_CONSOLE = "textinv prints to the console (warnings to stderr) and writes loss.csv in --out; no log settings"
_LOG_NAME = ("textinv names the run after its --out folder: TensorBoard's folder in --log-dir, with no prefix or "
             "time stamp, so a resumed run goes on in the same logs; the project in wandb and the other trackers")

# (their names, space-separated, without dashes; whose; the textinv command; textinv's flag, or None when textinv
# has none; what differs). Only the names that differ from textinv's: `--seed`, `--resolution`, `--vae` are the
# same, and an underscore spelling of a textinv flag (`--clip_skip`) is answered by the command line on its own
# (but where the note has more to say: kohya's `--dataset_config`).
NAMES: tuple[tuple[str, str, str, str | None, str], ...] = (
    # train: the diffusers script (and kohya's, where the name is the same)
    ("pretrained_model_name_or_path", _DK, "train", "--model", ""),
    ("train_data_dir", _DK, "train", "--images", "the pictures' folder; kohya's folder of "
                                                 "<repeats>_<words> subfolders is read too, each count a "
                                                 "picture's repeats"),
    ("placeholder_token", _D, "train", "--token", ""),
    ("initializer_token", _D, "train", "--init", "a phrase works too"),
    ("learnable_property", _D, "train", "--property", "object or style"),
    ("num_vectors", _D, "train", "--vectors", ""),
    ("output_dir", _DK, "train", "--out", ""),
    ("max_train_steps", _DK, "train", "--steps", "optimizer steps, as theirs"),
    ("learning_rate", _DK, "train", "--lr", "textinv's default is the paper's 5e-3, used as it is; the diffusers "
                                            "script's is 1e-4, and its README's 5e-4 is scaled by the batch, "
                                            "as --scale-lr does"),
    ("train_batch_size", _DK, "train", "--batch", "per process, as theirs; textinv's default is 4, the diffusers "
                                                  "script's 16"),
    ("gradient_accumulation_steps", _DK, "train", "--grad-accum", ""),
    ("scale_lr", _D, "train", "--scale-lr", "the same: the rate times batch, accumulation and processes; off "
                                            "unless given, in both"),
    ("lr_scheduler", _DK, "train", "--lr-schedule", "constant, constant_with_warmup, linear, cosine, "
                                                    "cosine_with_restarts (--lr-cycles) or polynomial (--lr-power); "
                                                    "kohya's adafactor schedule is not needed: --optimizer "
                                                    "adafactor runs at --lr and its schedule"),
    ("lr_warmup_steps", _DK, "train", "--warmup-steps", "only with an --lr-schedule other than constant; the "
                                                        "diffusers script's default 500 does nothing under its "
                                                        "default constant schedule"),
    ("adam_weight_decay", _D, "train", "--weight-decay", "the same default, 1e-2"),
    ("mixed_precision", _DK, "train", "--precision", "no is fp32, fp16 and bf16 are the same: the frozen weights' "
                                                     "precision, the learned vectors stay fp32 as in theirs; "
                                                     "textinv's default auto is bf16 on a CUDA GPU that has it, "
                                                     "else fp32"),
    ("resume_from_checkpoint", _D, "train", "--resume-or-start", "latest is --resume-or-start: textinv train --out "
                                                                 "DIR --resume-or-start (every setting given, as "
                                                                 "with latest) goes on from DIR's last checkpoint "
                                                                 "when DIR holds the run and starts it when DIR is "
                                                                 "empty, so a requeued job reruns one command; "
                                                                 "--resume alone refuses a DIR without a run. A path "
                                                                 "is not taken: the script's checkpoint-N folders "
                                                                 "are not read, --init-embedding "
                                                                 "DIR/learned_embeds-steps-N.safetensors starts a "
                                                                 "new run from that step's vectors"),
    ("checkpointing_steps save_steps", _D, "train", "--save-every", _SAVE),
    ("save_every_n_steps", _K, "train", "--save-every", _SAVE),
    ("checkpoints_total_limit", _D, "train", "--keep-checkpoints", "textinv keeps the last 2 unless told"),
    ("validation_prompt", _D, "train", "--sample-prompts", "prompts with {} (or the token) where the concept goes"),
    ("validation_steps", _D, "train", "--sample-every", ""),
    ("num_validation_images", _D, "train", None,
     "a sample grid draws one picture per --sample-prompts prompt, each at its own seed: give a prompt N times "
     "for N pictures of it"),
    ("center_crop", _D, "train", "--center-crop", "on by default in textinv; without it the diffusers script "
                                                  "squashes each picture to a square, as --no-center-crop does"),
    ("num_train_epochs", _D, "train", "--epochs", "its epoch is every picture --repeats times, and its "
                                                  "--repeats is 100 unless given, textinv's 1: its E epochs are "
                                                  "--epochs E --repeats 100; "
                                                  + _ROUNDED),
    ("report_to", _D, "train", "--log-with", "tensorboard, wandb and the other trackers accelerate has, "
                                             "comma-separated; off unless given (the diffusers script's default "
                                             "is tensorboard); loss.csv and samples/ in --out are written either way"),
    ("logging_dir", _DK, "train", "--log-dir", "default OUT/logs, as the diffusers script's; a relative DIR is "
                                               "read from the working directory, as kohya's (the diffusers "
                                               "script's is inside --output_dir: --log-dir OUT/logs); the events go "
                                               "in a folder named after --out's inside it. Give --log-with too: "
                                               "kohya's logs to TensorBoard when --logging_dir comes alone, textinv "
                                               "refuses --log-dir alone"),
    ("enable_xformers_memory_efficient_attention", _D, "train", None, _ATTENTION),
    ("push_to_hub", _D, "train", None, "textinv publishes with a command of its own, once the run is done: textinv "
                                       "push OUT --repo OWNER/NAME (the embedding, a model card, the sample grid)"),
    ("hub_model_id", _D, "train", None, "it is --repo OWNER/NAME of textinv push OUT, which publishes the run once it "
                                        "is done"),
    ("hub_token", _D, "train", None, "it is --hub-token of textinv push OUT --repo OWNER/NAME, which publishes the "
                                     "run once it is done (default: HF_TOKEN, or `hf auth login`'s)"),
    ("tokenizer_name", _D, "train", None, _TOKENIZER),
    ("save_as_full_pipeline", _D, "train", None, _EMBEDS_ONLY),
    ("only_save_embeds", _D, "train", None, "not needed: textinv saves only the learned vectors, as this switch of "
                                            "the script's older versions did"),
    ("dataloader_num_workers", _D, "train", None, _NO_LOADER),
    ("allow_tf32", _D, "train", None, "textinv leaves PyTorch's TF32 defaults as they are (on for convolutions, off "
                                      "for matrix multiplies) and has no switch; its default --precision auto runs "
                                      "the frozen weights in bf16 on every GPU that has TF32, where TF32 plays no "
                                      "part"),
    ("no_safe_serialization", _D, "train", None, "textinv writes .safetensors (--format a1111: the web UI's .pt); "
                                                 "`textinv convert` writes the script's pickled learned_embeds.bin "
                                                 "(diffusers-bin) from it"),
    ("adam_beta1 adam_beta2 adam_epsilon", _D, "train", "--optimizer-args", _ADAM),
    ("use_8bit_adam", _DK, "train", None, _TINY_OPTIMIZER),
    ("lr_num_cycles", _D, "train", "--lr-cycles", "with --lr-schedule cosine_with_restarts, as theirs"),
    ("validation_epochs", _D, "train", None, "textinv samples by steps: --sample-every N"),
    ("local_rank", _D, "train", None, "not needed: accelerate launch gives each process its rank, which textinv "
                                      "reads through accelerate"),
    # train: kohya's
    ("token_string", _K, "train", "--token", "a caption may hold it, or {}; one with neither gets it in front"),
    ("init_word", _K, "train", "--init", ""),
    ("num_vectors_per_token", "kohya's and the web UI's", "train", "--vectors", ""),
    ("weights", _K, "train", "--init-embedding", "start from an embedding file's vectors"),
    ("use_object_template", _K, "train", "--property", "--property object: the paper's templates, for the pictures "
                                                       "without a caption file (one that has it is read)"),
    ("use_style_template", _K, "train", "--property", "--property style: the paper's templates, for the pictures "
                                                      "without a caption file (one that has it is read)"),
    ("max_train_epochs", _K, "train", "--epochs", "the same epoch: every picture its folder's count x --repeats "
                                                  "times; given with --steps, textinv refuses, where kohya's takes the "
                                                  "epochs; " + _ROUNDED),
    ("save_every_n_epochs", _K, "train", None, "textinv saves by steps: --save-every N"),
    ("sample_every_n_steps", _K, "train", "--sample-every", ""),
    ("sample_every_n_epochs", _K, "train", None, "textinv samples by steps: --sample-every N"),
    ("sample_prompts", _K, "train", "--sample-prompts", "the same file (.txt, .toml or .json) with its per-prompt "
                                                        "options: negative prompt, seed, CFG scale, steps, sampler "
                                                        "and size; or the prompts themselves, {} or the token where "
                                                        "it goes"),
    ("sample_sampler", _K, "train", None, "textinv's grids draw with the model's own scheduler, unless a prompt of "
                                          "a --sample-prompts file (kohya's) chooses its own"),
    ("sample_at_first", _K, "train", None, "not needed: textinv draws a grid before the first step whenever "
                                           "--sample-every is on"),
    ("caption_extension caption_extention", _K, "train", None,
     "not needed: textinv reads NAME.txt, or kohya's NAME.caption, beside each picture; another suffix is a subset's "
     "caption_extension in a --dataset-config file"),
    ("shuffle_caption", _K, "train", "--shuffle-tags", ""),
    ("keep_tokens", _K, "train", "--keep-tags", ""),
    ("caption_tag_dropout_rate", _K, "train", "--tag-dropout", ""),
    ("enable_bucket", _K, "train", "--buckets", ""),
    ("min_bucket_reso max_bucket_reso", _K, "train", None, "textinv's buckets (--buckets) span half to twice "
                                                           "--resolution"),
    ("flip_aug", _K, "train", "--flip", "on by default in textinv (--no-flip turns it off), off in kohya's"),
    ("noise_offset", _K, "train", "--noise-offset", ""),
    ("noise_offset_random_strength", _K, "train", "--noise-offset-random-strength", ""),
    ("adaptive_noise_scale", _K, "train", "--adaptive-noise-scale", "with --noise-offset, as theirs"),
    ("multires_noise_iterations", _K, "train", "--multires-noise-iterations", ""),
    ("multires_noise_discount", _K, "train", "--multires-noise-discount", "0.3 unless given, as theirs"),
    ("v_parameterization", _K, "train", "--prediction-type", "--prediction-type v_prediction; textinv reads it from "
                                                             "the model's scheduler config when it has one"),
    ("v2", _K, "train", None, "not needed: textinv tells an SD 2.x model from its own files"),
    ("save_state", _K, "train", None, "not needed: every --save-every checkpoint holds the optimizer's state; "
                                      "textinv train --out DIR --resume continues"),
    ("save_model_as", _K, "train", "--format", "a layout, the suffix follows: kohya (.safetensors), a1111 (.pt), "
                                               "diffusers or sdxl"),
    ("output_name", _K, "train", None, "textinv names the file: learned_embeds.safetensors (--format diffusers), "
                                       "else after the token"),
    ("cache_latents cache_latents_to_disk", _K, "train", None, "not needed: textinv encodes each picture once and "
                                                               "keeps its latent distribution"),
    ("optimizer_type", _K, "train", "--optimizer", "adamw (the default), lion, prodigy, adafactor, sgd, the "
                                                   "schedule-free and the D-Adaptation ones, on the new vectors only; "
                                                   "its names are taken (AdamW, Lion, Prodigy, AdaFactor, SGDNesterov, "
                                                   "AdamWScheduleFree, SGDScheduleFree, RAdamScheduleFree, "
                                                   "DAdaptation, DAdaptAdam, ...), AdamW8bit, PagedAdamW8bit and "
                                                   "PagedAdamW as adamw in fp32 (a few thousand numbers need no "
                                                   "8-bit state)"),
    ("use_lion_optimizer", _K, "train", "--optimizer", "--optimizer lion (pip install lion-pytorch)"),
    ("dataset_config", _K, "train", "--dataset-config", "the same file, for one --token: its subsets' folders, "
                                                        "repeats and caption extensions, and the settings textinv "
                                                        "has (resolution, batch_size, enable_bucket, flip_aug, ...); "
                                                        "a key it has no equivalent for is refused, saying what to "
                                                        "do"),
    ("log_with", _K, "train", "--log-with", "tensorboard or wandb; its all is --log-with tensorboard,wandb"),
    ("log_prefix log_tracker_name", _K, "train", None, _LOG_NAME),
    ("wandb_run_name", _K, "train", None, "wandb names each run (and each resume) itself; " + _LOG_NAME),
    ("log_tracker_config", _K, "train", None, "textinv takes no tracker settings file; the trackers read their own "
                                              "environment variables"),
    ("log_config", _K, "train", None, "not needed: config.yaml in --out holds every setting of the run"),
    ("wandb_api_key", _K, "train", None, "log in with `wandb login` (or set WANDB_API_KEY) before training, then "
                                         "--log-with wandb"),
    ("xformers mem_eff_attn sdpa", _K, "train", None, _ATTENTION),
    ("tokenizer_cache_dir", _K, "train", None, _TOKENIZER + " (offline, a single file's comes from "
                                                            "--single-file-config)"),
    ("max_data_loader_n_workers persistent_data_loader_workers", _K, "train", None, _NO_LOADER),
    ("optimizer_args", _K, "train", "--optimizer-args", "KEY=VALUE each, read as theirs (betas=0.9,0.99 d_coef=2); "
                                                        "weight_decay is --weight-decay"),
    ("fused_backward_pass", _K, "train", None, _TINY_OPTIMIZER),
    ("lr_scheduler_num_cycles", _K, "train", "--lr-cycles", "with --lr-schedule cosine_with_restarts, as theirs"),
    ("lr_scheduler_power", _K, "train", "--lr-power", "with --lr-schedule polynomial, as theirs"),
    ("lr_scheduler_type lr_scheduler_args lr_decay_steps lr_scheduler_timescale "
     "lr_scheduler_min_lr_ratio", _K, "train", None, _SCHEDULES),
    ("huggingface_repo_id", _K, "train", None, "it is --repo OWNER/NAME of textinv push OUT, which publishes the run "
                                               "once it is done"),
    ("huggingface_token", _K, "train", None, "it is --hub-token of textinv push OUT --repo OWNER/NAME, which "
                                             "publishes the run once it is done"),
    ("huggingface_repo_visibility", _K, "train", None, _PUSH + "; its repo is public unless --private"),
    ("huggingface_repo_type huggingface_path_in_repo save_state_to_huggingface resume_from_huggingface "
     "async_upload", _K, "train", None, _PUSH),
    ("save_precision", _K, "train", None, "textinv saves the vectors in fp32, as trained (a few KB)"),
    ("save_n_epoch_ratio save_last_n_epochs save_last_n_epochs_state save_last_n_steps save_last_n_steps_state",
     _K, "train", None, _KEEP),
    ("save_state_on_train_end", _K, "train", None, "not needed: the last checkpoint holds the optimizer's state; "
                                                   "textinv train --out DIR --resume continues"),
    ("initial_epoch skip_until_initial_step", _K, "train", None, _RESUMED_COUNT),
    ("weighted_captions", _K, "train", None, "textinv trains on a caption's text as it is written: (word:1.3) is no "
                                             "weight there (kohya's textual inversion scripts do not take this "
                                             "flag either); `textinv generate` weighs a prompt's (word:1.3)"),
    ("cache_text_encoder_outputs cache_text_encoder_outputs_to_disk", _K, "train", None,
     "not possible in textual inversion: the learned vectors go through the text encoders at every step, so their "
     "outputs change as they learn"),
    ("max_token_length", _K, "train", "--max-token-length", "150 or 225, read in 75-token chunks laid end to end "
                                                            "as kohya lays them; left out, theirs reads 75, as "
                                                            "textinv's default"),
    ("torch_compile", _K, "train", "--compile", "--compile blocks or unet: torch.compile of the frozen UNet"),
    ("dynamo_backend", _K, "train", None, "textinv compiles with torch.compile's default backend, inductor; "
                                          "--compile-mode chooses its mode"),
    ("full_fp16 full_bf16", _K, "train", "--precision", "--precision fp16 or bf16: the frozen weights in it; the "
                                                        "learned vectors and their gradients stay fp32"),
    ("fp8_base", _K, "train", None, "textinv has no fp8 weights: --precision fp16 or bf16 is its smallest"),
    ("ddp_timeout ddp_gradient_as_bucket_view ddp_static_graph deepspeed zero_stage offload_optimizer_device "
     "offload_optimizer_nvme_path offload_param_device offload_param_nvme_path zero3_init_flag "
     "zero3_save_16bit_model fp16_master_weights_and_gradients", _K, "train", None, _DDP),
    ("lowram highvram", _K, "train", None, "textinv has no memory modes; --gradient-checkpointing, --batch and "
                                           "--precision are its memory settings"),
    ("ip_noise_gamma", _K, "train", "--ip-noise-gamma", ""),
    ("ip_noise_gamma_random_strength", _K, "train", "--ip-noise-gamma-random-strength", ""),
    ("zero_terminal_snr", _K, "train", None,
     "textinv trains on the model's own noise schedule, zero terminal SNR when its scheduler config (or its "
     "checkpoint) says so, and has no switch: textual inversion leaves the UNet as it is, so a schedule rescaled for "
     "training alone would teach the vectors for noise levels the model never learned, and `generate` (the web UI, "
     "diffusers) draws with the model's own schedule; for a zero-terminal-SNR model, give one whose scheduler "
     "config has rescale_betas_zero_snr: true"),
    ("loss_type", _K, "train", "--loss-type", "l2, l1, huber or smooth_l1, as theirs"),
    ("huber_schedule", _K, "train", "--huber-schedule", "snr, exponential or constant; snr unless given, as theirs"),
    ("huber_c", _K, "train", "--huber-c", ""),
    ("huber_scale", _K, "train", "--huber-scale", "for the exponential and constant schedules, which theirs scales; "
                                                  "its snr schedule has none"),
    ("debiased_estimation_loss", _K, "train", "--debiased-estimation-loss", ""),
    ("scale_v_pred_loss_like_noise_pred", _K, "train", "--scale-v-pred-loss-like-noise-pred",
     "for v-prediction models"),
    ("v_pred_like_loss", _K, "train", "--v-pred-like-loss", "for epsilon-prediction models"),
    ("masked_loss conditioning_data_dir", _K, "train", None, "textinv weighs the loss by the pictures' own alpha "
                                                             "channels (--alpha-mask), not by masks from another "
                                                             "folder"),
    ("prior_loss_weight reg_data_dir", _K, "train", None, "textinv uses no regularization pictures: only the new "
                                                          "vectors are learned, the model does not change"),
    ("config_file", _K, "train", None, "textinv's --config takes its own settings file (YAML, TOML or JSON); a key "
                                       "of theirs is answered with textinv's name"),
    ("output_config", _K, "train", None, "not needed: textinv writes every setting of the run to config.yaml in "
                                         "--out, which --config reads back"),
    ("metadata_title metadata_author metadata_description metadata_license metadata_tags", _K, "train", None,
     "textinv has no settings for the file's metadata: it records the token, base model, vectors, steps and its "
     "version itself"),
    ("console_log_level console_log_file console_log_simple", _K, "train", None, _CONSOLE),
    ("cache_info skip_cache_check", _K, "train", None, "not needed: textinv keeps no cache between runs"),
    ("caption_separator", _K, "train", "--tag-separator", "the varied tags are joined with ', ', as theirs"),
    ("keep_tokens_separator", _K, "train", "--keep-tags-separator", "taken out of the caption also when the tags do "
                                                                    "not vary, where theirs is left in the text"),
    ("secondary_separator", _K, "train", "--tag-joiner", ""),
    ("caption_prefix", _K, "train", "--caption-prefix", "put before each caption file's text, a space between, "
                                                        "as theirs; the templates stay as they are, as theirs "
                                                        "replace the whole caption"),
    ("caption_suffix", _K, "train", "--caption-suffix", "put after each caption file's text, a space between, as "
                                                        "theirs"),
    ("caption_dropout_rate", _K, "train", "--caption-dropout", "the sample trains on the empty prompt, as theirs "
                                                              "(their textual inversion has no such flag): the "
                                                              "vectors learn nothing from it"),
    ("caption_dropout_every_n_epochs", _K, "train", "--caption-dropout-every", "epochs N, 2N, ... on the empty "
                                                                              "prompt, as theirs"),
    ("enable_wildcard", _K, "train", "--caption-wildcards", "a caption file's lines and {a|b} choices drawn as "
                                                            "theirs, from --seed"),
    ("token_warmup_min", _K, "train", "--tag-warmup-min", ""),
    ("token_warmup_step", _K, "train", "--tag-warmup-steps", "below 1 a share of --steps, as theirs; the tag holding "
                                                             "the token is used from the start"),
    ("random_crop", _K, "train", "--random-crop", "as theirs, a window at a random place after the short side is "
                                                  "resized; textinv encodes 8 windows a picture up front (theirs "
                                                  "refuses it with --cache_latents)"),
    ("color_aug face_crop_aug_range", _K, "train", None,
     "textinv's augmentations are --flip and --random-crop; it encodes each picture once, so no colour or face-crop "
     "augmentation (kohya refuses color_aug with --cache_latents too)"),
    ("debug_dataset", _K, "train", None, "textinv has no dataset preview mode"),
    ("validate_every_n_steps", _K, "train", "--validate-every", "textinv also scores the starting vectors and the "
                                                                "last step's"),
    ("validate_every_n_epochs", _K, "train", None, "textinv validates by steps: --validate-every N (by default at "
                                                   "every --save-every step)"),
    ("max_validation_steps", _K, "train", "--validation-draws", "textinv's counts the draws per picture held out, "
                                                                "each at its own timestep, not batches"),
    ("vae_batch_size", _K, "train", None, "not needed: textinv encodes each picture once, before the first step"),
    ("skip_image_resolution", _K, "train", None,
     "textinv skips no pictures by size from the command line (pick the --images you train on); a --dataset-config "
     "file's skip_image_resolution, in [general] or a [[datasets]], leaves out its pictures of at most that area, as "
     "kohya's does"),
    ("bucket_reso_steps", _K, "train", None, "textinv's buckets (--buckets) step by the model's down-sampling, 64 "
                                             "pixels (SDXL: 32); no other setting"),
    ("bucket_no_upscale", _K, "train", "--bucket-no-upscale", "with --buckets: textinv refuses it alone, which kohya "
                                                               "ignores"),
    ("resize_interpolation", _K, "train", None, "textinv resizes with Lanczos when shrinking, bicubic when "
                                                "enlarging; no setting"),
    ("dataset_class in_json dataset_repeats", _K, "train", None,
     "textinv reads pictures from folders (--images, --concepts or --dataset-config) and captions from files "
     "beside them; --repeats repeats the pictures"),
    ("no_half_vae", _K, "train", None, "not needed: in fp16 textinv keeps SDXL's VAE in fp32 unless the VAE's "
                                       "config says it needs no upcast (force_upcast: false, as the fp16-fixed "
                                       "VAE's)"),
    ("disable_mmap_load_safetensors", _K, "train", None, "textinv loads .safetensors files as diffusers does; no "
                                                         "setting"),
    # train: the web UI's Train tab (its train_embedding arguments, also its API's)
    ("learn_rate", _W, "train", "--lr", "a stepped rate such as 0.05:10, 0.005 is --lr-steps"),
    ("data_root", _W, "train", "--images", ""),
    ("log_directory", _W, "train", "--out", ""),
    ("embedding_name", _W, "train", "--token", ""),
    ("init_text", _W, "train", "--init", ""),
    ("batch_size", _W, "train", "--batch", ""),
    ("gradient_step", _W, "train", "--grad-accum", ""),
    ("training_width training_height", _W, "train", "--resolution", "WIDTHxHEIGHT with --no-center-crop, as the "
                                                                    "web UI squashes each picture to it; --buckets "
                                                                    "trains each near its own proportions"),
    ("template_filename template_file", _W, "train", "--templates", "[name] and [filewords] work as in the web UI"),
    ("create_image_every", _W, "train", "--sample-every", ""),
    ("save_embedding_every", _W, "train", "--save-every", ""),
    ("tag_drop_out", _W, "train", "--tag-dropout", ""),
    ("use_weight", _W, "train", "--alpha-mask", ""),
    ("clip_grad_mode clip_grad_value", _W, "train", "--max-grad-norm",
     "mode 'norm'; mode 'value' is --max-grad-value (a stepped value such as 0.1:100, 0.05 is taken by both)"),
    ("varsize", _W, "train", "--buckets", "with --bucket-no-upscale: a picture within --resolution's area keeps "
                                          "its size (cut down to the model's steps), a larger one is scaled down"),
    ("save_image_with_stored_embedding", _W, "train", "--png-embeddings",
     "beside each sample grid, samples/NAME-STEP.png holds that step's embedding in the grid's picture"),
    ("preview_from_txt2img", _W, "train", "--sample-prompts",
     "the grids' own prompts; a kohya-style prompts file gives each its negative prompt, sampler, CFG scale, seed "
     "and size"),
    ("preview_prompt", _W, "train", "--sample-prompts", "prompts with {} (or the token) where the concept goes"),
    ("preview_negative_prompt preview_sampler_name preview_sampler_index preview_cfg_scale preview_seed "
     "preview_width preview_height", _W, "train", "--sample-prompts",
     "a kohya-style prompts file gives each prompt its negative prompt, sampler, CFG scale, seed and size"),
    ("preview_steps", _W, "train", "--sample-steps", ""),
    ("name", _W, "train", "--token", ""),
    ("overwrite_old", _W, "train", "--overwrite", ""),
    ("latent_sampling_method", _W, "train", "--latent-sampling", "the same three: random (textinv's default), "
                                                                 "deterministic, once (the web UI's default)"),
    # train: the web UI's Train tab's form names (modules/ui.py) and its saved settings-*.json keys, where they differ
    ("new_embedding_name train_embedding_name", _W, "train", "--token", ""),
    ("initialization_text", _W, "train", "--init", ""),
    ("nvpt", _W, "train", "--vectors", ""),
    ("overwrite_old_embedding", _W, "train", "--overwrite", ""),
    ("embedding_learn_rate", _W, "train", "--lr", "a stepped rate such as 0.05:10, 0.005 is --lr-steps"),
    ("dataset_directory", _W, "train", "--images", ""),
    ("model_name", _W, "train", "--model", "a checkpoint file or a diffusers folder"),
    ("model_hash num_of_dataset_images datetime", _W, "train", None,
     "a record of the run, not a setting: textinv records every setting of a run (the model among them) in "
     "config.yaml in --out"),
    ("initial_step", "the web UI's and kohya's", "train", None,
     _RESUMED_COUNT + " (the web UI's is the step a run went on from, a record; kohya's sets it)"),
    # generate: diffusers' pipeline arguments and kohya's gen_img
    ("pretrained_model_name_or_path", _DK, "generate", "--model", ""),
    ("ckpt", _G, "generate", "--model", ""),
    ("output_dir", _D, "generate", "--out", ""),
    ("outdir", _G, "generate", "--out", ""),
    ("num_inference_steps", _P, "generate", "--steps", ""),
    ("cfg_scale", _W, "generate", "--guidance", "its CFG scale"),  # (its API's txt2img names)
    ("sampler_name sampler_index", _W, "generate", "--sampler", "its names, such as 'Euler a' or 'DPM++ 2M Karras', "
                                                                "are taken"),
    ("guidance_scale", _P, "generate", "--guidance", ""),
    ("scale", _G, "generate", "--guidance", ""),
    ("num_images_per_prompt", _P, "generate", "-n", ""),
    ("images_per_prompt", _G, "generate", "-n", ""),
    ("textual_inversion_embeddings", _G, "generate", "--embedding", ""),
    ("W", _G, "generate", "--width", ""),
    ("H", _G, "generate", "--height", ""),
    ("torch_dtype", _P, "generate", "--precision", "fp32, fp16 or bf16; textinv's default auto is fp16 on a CUDA GPU, "
                                                   "else fp32"),
    ("fp16 bf16", _G, "generate", "--precision", "--precision fp16 or bf16"),
    ("full_fp16 full_bf16", _G, "generate", "--precision", "--precision fp16 or bf16"),
    ("v1 v2 sdxl", _G, "generate", None, "not needed: textinv tells the model's family from its own files"),
    ("v_parameterization", _G, "generate", "--prediction-type", "--prediction-type v_prediction; textinv reads it "
                                                                "from the model's scheduler config when it has one"),
    ("from_file", _G, "generate", "--prompt", "--prompt P1 P2 ..., or a --config file's list of prompts"),
    ("from_module prompter_module_args shuffle_prompts", _G, "generate", None,
     "textinv draws the prompts given (--prompt), in their order"),
    ("interactive no_preview", _G, "generate", None, "textinv writes the pictures to --out; it has no interactive "
                                                     "mode"),
    ("image_path", _G, "generate", "--init-image", "one picture, redrawn for every prompt"),
    ("strength", _G, "generate", "--denoise", "the share of the picture redrawn (default 0.75, the web UI's)"),
    ("mask_path", _G, "generate", "--mask", "white where the --init-image picture is redrawn"),
    ("guide_image_path control_net_lllite_models control_net_models control_net_preps "
     "control_net_multipliers control_net_ratios clip_vision_strength", _G, "generate", None, _NO_TEXT_TO_IMAGE),
    ("sequential_file_name use_original_file_name", _G, "generate", None,
     "textinv names each file itself: its number, the prompt's first words and its seed"),
    ("n_iter", _G, "generate", "-n", "N pictures per prompt, picture i at --seed + i"),
    ("iter_same_seed", _G, "generate", None, "every prompt's picture i uses --seed + i already"),
    ("original_height original_width original_height_negative original_width_negative crop_top crop_left", _G,
     "generate", None, "textinv conditions SDXL on the picture's own size, uncropped, as diffusers does by default"),
    ("vae_batch_size vae_slices", _G, "generate", None, "textinv decodes each pipeline call's pictures together: "
                                                        "--batch-size sets how many"),
    ("no_half_vae", _G, "generate", None, "not needed: in fp16 textinv keeps SDXL's VAE in fp32 unless the VAE's "
                                          "config says it needs no upcast (force_upcast: false, as the fp16-fixed "
                                          "VAE's)"),
    ("xformers sdpa diffusers_xformers", _G, "generate", None, _ATTENTION),
    ("opt_channels_last", _G, "generate", None, "textinv's generate has no channels-last setting"),
    ("network_module network_weights network_mul network_args network_show_meta network_merge_n_models network_merge "
     "network_pre_calc network_regional_mask_max_color_codes", _G, "generate", None, _LORA),
    ("max_embeddings_multiples", _G, "generate", None, "not needed: textinv reads a prompt of any length in chunks "
                                                       "of 75 tokens, as the web UI does"),
    ("emb_normalize_mode", _G, "generate", None, "textinv weighs a prompt's words as the web UI does ((word:1.3)), "
                                                 "restoring the mean; no other mode"),
    ("highres_fix_scale", _G, "generate", "--hires-scale", "the other way round: kohya's is the first stage's size "
     "(0.5: half of --W x --H), textinv's the enlargement of the first pass (--width x --height): kohya's --W 1024 "
     "--highres_fix_scale 0.5 is --width 512 --hires-scale 2"),
    ("highres_fix_steps", _G, "generate", "--steps", "kohya's first stage's steps are textinv's --steps; the hires "
     "pass's are --hires-steps (default: --steps)"),
    ("highres_fix_strength", _G, "generate", None, "textinv's first pass draws from noise; the hires pass redraws "
     "--denoise of the way"),
    ("highres_fix_latents_upscaling", _G, "generate", "--hires-upscaler", "--hires-upscaler latent"),
    ("highres_fix_upscaler highres_fix_upscaler_args", _G, "generate", "--hires-upscaler", "textinv runs no "
     "upscaling network: --hires-upscaler lanczos enlarges the first pass's pictures, latent its latents"),
    ("highres_fix_save_1st", _G, "generate", None, "textinv writes the hires pass's pictures only"),
    ("highres_fix_disable_control_net ds_depth_1 ds_timesteps_1 "
     "ds_depth_2 ds_timesteps_2 ds_ratio gradual_latent_timesteps gradual_latent_ratio gradual_latent_ratio_step "
     "gradual_latent_every_n_steps gradual_latent_s_noise gradual_latent_unsharp_params", _G, "generate", None,
     "textinv has no ControlNet, Deep Shrink or Gradual Latent"),
    ("negative_scale", _G, "generate", None, "textinv has one guidance scale, --guidance"),
    ("tokenizer_cache_dir", _G, "generate", None, _TOKENIZER),
    ("console_log_level console_log_file console_log_simple", _G, "generate", None, _CONSOLE),
    ("generator", _P, "generate", "--seed", "picture i of a prompt at seed + i"),
    # (diffusers' SDXL gives its prompt to CLIP-L, its prompt_2 to OpenCLIP-G; ComfyUI's text_l and text_g)
    ("prompt_2", _P, "generate", "--prompt", "OpenCLIP-G's text; diffusers' prompt, CLIP-L's, is then --prompt-l, "
                                             "with --emphasis comfy"),
    ("negative_prompt_2", _P, "generate", "--negative-prompt", "OpenCLIP-G's text; diffusers' negative_prompt, "
                                                               "CLIP-L's, is then --negative-prompt-l, with "
                                                               "--emphasis comfy"),
    ("output_type", _P, "generate", None, "textinv writes PNGs, each carrying its prompt, seed and settings"),
    # caption: kohya's finetune/make_captions.py (its other flags are textinv's, dashed)
    ("train_data_dir", "kohya's make_captions'", "caption", "--images", "the pictures' folder, as train reads it: "
                                                                      "its <repeats>_<words> subfolders too"),
    ("caption_weights", "kohya's make_captions'", "caption", "--model", "transformers' BLIP: a hub id or a folder "
                                                                      "(BlipForConditionalGeneration with its "
                                                                      "processor), not the .pth file"),
    ("caption_extention", "kohya's make_captions'", "caption", "--caption-extension", "textinv's default is .txt, "
                                                                                    "kohya's .caption"),
    ("batch_size", "kohya's make_captions'", "caption", "--batch", ""),
    ("recursive", "kohya's make_captions'", "caption", None, "textinv captions the pictures train reads: the "
                                                              "folder's, or those of its <repeats>_<words> "
                                                              "subfolders, one level down"),
    ("max_data_loader_n_workers pin_memory", "kohya's make_captions'", "caption", None,
     "not needed: a few pictures are read as they are captioned, with no data loader"),
    ("debug", "kohya's make_captions'", "caption", None, "not needed: textinv prints every caption it writes"),
    # push: the diffusers script's hub flags
    ("hub_model_id", _D, "push", "--repo", "OWNER/NAME"),
    ("push_to_hub", _D, "push", None, "not needed: publishing is what textinv push does"),
)


def _index() -> dict[tuple[str, str], tuple[str, str | None, str]]:
    table = {}
    for names, whose, command, flag, note in NAMES:
        for name in names.split():
            if (name, command) in table:  # (one answer per name and command, or the table contradicts itself)
                raise ValueError(f"foreign.NAMES names {name!r} twice for {command}")
            table[name, command] = (whose, flag, note)
    return table


_INDEX = _index()


def setting_of(flag: str) -> str:
    """The config key of a textinv flag: `--grad-accum` -> `grad_accum`, `-n` -> `n`."""
    return flag.lstrip("-").replace("-", "_")


def foreign_hint(name: str, command: str, as_key: bool = False) -> str | None:
    """What another tool's flag or config key `name` is called in `textinv COMMAND`, as a sentence, or None when
    it is none of theirs that textinv knows. `as_key`: name textinv's config key, not its flag, in a sentence that
    starts "that is" (the caller has named the key).

    >>> foreign_hint("--placeholder_token", "train")
    "--placeholder_token is the diffusers script's name; textinv calls it --token"
    """
    key = name.split("=")[0].lstrip("-")
    found = _INDEX.get((key, command)) or _INDEX.get((key.replace("-", "_"), command))
    if found is None:
        return None
    whose, flag, note = found
    shown = "that" if as_key else name.split("=")[0]
    if flag is None:
        return f"{shown} is {whose} name; {note}"
    ours = repr(setting_of(flag)) if as_key else flag
    return f"{shown} is {whose} name; textinv calls it {ours}" + (f" ({note})" if note else "")
