"""``stemd serve --ray``: the front door (OSC server, scheduler) in this process, the work on a Ray cluster.

:mod:`.replica` is the Ray Serve deployment (one replica per GPU, each today's worker with its model
pool); :mod:`.frontdoor` starts it and holds the workers the scheduler dispatches to, one per replica
slot, which stream bars back through a streaming deployment handle. Ray is imported only in these
modules, and only by ``stemd serve --ray``.
"""
