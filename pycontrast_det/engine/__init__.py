from .evaluation import EvalResult, compare_with_published, evaluate
