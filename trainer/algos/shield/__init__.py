"""The reachability shield's threshold: ``calibration`` on the dataset's in-sample actions, and
``budget``, the online intervention budget adapted to the measured episode cost."""
