"""Footage: every image the gateway keeps or lets leave, and the clips on disk.

Owns: privacy masks (`privacy`) and the one outgoing-image path (`images`), the pre-event buffer
(`prebuffer`), the per-event clip recorder (`recorder`), what a clip is (`clips`) and how frames
become one (`encoding`), the clip store on disk (`store`) with its start-up scan (`scan`) and
evidence holds (`holds`), retention by quota and free space (`retention`), and the clip.* commands'
view of it all (`access`).
May not touch: MQTT or the command envelope; failures the platform should see are raised as
`ClipError` with a protocol error code, and the command side turns them into replies.
"""
