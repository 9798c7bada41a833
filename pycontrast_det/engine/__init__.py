from .evaluation import EvalResult, compare_with_published, evaluate
from .logs import LogSummary, LossPoint, parse_log, plot_curves
from .launch import launch
from .reproduce import ReproducePlan, ReproduceResult, plan_reproduction, reproduce
from .train import TrainResult, train
