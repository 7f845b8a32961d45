"""Running mmpipe on a Ray cluster: cluster-launcher config checks, token auth, Ray Jobs submission."""


class ClusterError(RuntimeError):
    """The cluster cannot be used as asked; the message (one line) says what is wrong and how to fix it."""


class NoSuchJob(ClusterError):
    """The cluster answered and has no job with that id (HTTP 404), as opposed to not answering at all."""
