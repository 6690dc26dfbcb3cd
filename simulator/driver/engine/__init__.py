"""The engine: the stage loop and the backends that host a run's sites and learner.

:mod:`~simulator.driver.engine.protocol` is the one protocol the stage loop
(:mod:`~simulator.driver.engine.loop`) speaks; :mod:`~simulator.driver.engine.ray_actors` (the
only module that imports Ray), :mod:`~simulator.driver.engine.flower_nodes` and
:mod:`~simulator.driver.engine.inprocess` are its backends.
"""
