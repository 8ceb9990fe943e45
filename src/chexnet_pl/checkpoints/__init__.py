"""Checkpoints, read and written: ``file_io`` (the ground floor: one ``torch.load``, atomic
writes, the hyperparameters without the weights; imports nothing of the project but its errors
and file helpers), ``lightning_io`` (Lightning's checkpoint I/O through ``file_io``) and ``runs``
(a trained run rebuilt from its checkpoint: the one place every command loads a model).

This file imports nothing, so the models and the trainer plugins can import ``file_io`` without
importing what ``runs`` needs."""
