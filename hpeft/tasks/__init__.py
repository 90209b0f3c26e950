from hpeft.tasks.base import Hybrid
from hpeft.tasks.channel import TASKS, ChannelEstimationTask
from hpeft.tasks.variants import LoRAOnly, Pretrain

__all__ = ["TASKS", "ChannelEstimationTask", "Hybrid", "LoRAOnly", "Pretrain"]
