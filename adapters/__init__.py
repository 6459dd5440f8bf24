"""I/O around the pure engine: PBX adapters, the service runtime, CLI, replay."""
