"""The tasks a `Hybrid` can train, by the name its `task` argument takes."""

from hpeft.tasks.channel import ChannelEstimationTask
from hpeft.tasks.lm import LanguageModelingTask

TASKS = {task.name: task for task in (ChannelEstimationTask, LanguageModelingTask)}
