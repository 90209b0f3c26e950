from hpeft.metrics.flops import count_flops, flop_counter
from hpeft.metrics.nmse import NMSEdB, nmse_db

__all__ = ["NMSEdB", "count_flops", "flop_counter", "nmse_db"]
