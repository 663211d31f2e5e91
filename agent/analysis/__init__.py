"""Analysis of frames: motion, motion events, object detection and tracking, replay of recordings.

Owns: what a frame means (`pipeline.CameraPipeline` and its stages), the event phases it yields
(`events.EventPhase`), the TFLite model and its worker (`objects/`). May not touch: the network,
the clip store or any thread it does not own; a camera's pipeline is driven by that camera's own
detect thread (agent.runtime.camera), which also hands it every settings change.
"""
