"""Footage: every image the gateway keeps or lets leave, and the clips on disk.

Owns: privacy masks (`privacy`) and the one outgoing-image path (`images`), the pre-event buffers
(`packet_ring`: a packet camera's own H.264/H.265; `prebuffer`: JPEG frames on the pixel path),
the per-event clip recorders (`packet_recorder` by remux, `recorder` by re-encode, with the clips a
stop could not finish kept in `pending`; `recording` chains them), what a clip is (`clips`) and how
it is made (`remux` from packets, `encoding` from frames; `packet_frames` decodes a kept moment),
the clip store on disk (`store`) with its start-up scan (`scan`) and evidence holds (`holds`),
retention by quota and free space (`retention`), and the clip.* commands' view of it all
(`access`).
May not touch: MQTT or the command envelope; failures the platform should see are raised as
`ClipError` with a protocol error code, and the command side turns them into replies.
"""
