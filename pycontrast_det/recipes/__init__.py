"""Recipes: reproduce a row of the table, fine-tune an entry on a dataset; their scaling, equivalent commands,
detectron2 backend and SLURM launcher."""
from .finetune import FinetunePlan, finetune, plan_finetune
from .reproduce import ReproducePlan, ReproduceResult, plan_reproduction, reproduce

__all__ = ["FinetunePlan", "ReproducePlan", "ReproduceResult", "finetune", "plan_finetune", "plan_reproduction",
           "reproduce"]
