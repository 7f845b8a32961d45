"""Pure batch stages: functions over ``dict[str, np.ndarray]`` and bytes (decode, clean, align, rebalance, augment,
the data report's counting). May import NumPy, the codecs and the augmentation libraries, ``pipeline.spec`` and
each other; never Ray, never a file system: everything here is testable with plain lists of samples."""
