-- The stat identity of each working file when its current content was read (git's index):
-- a scan reads again only the files whose identity changed, or was recorded too close to a
-- write to be trusted. NULL: unknown, the file is read. Written in the transaction of the
-- version it describes; cleared when the current content was not read from files/.
-- Inodes and devices are unsigned 64-bit: stored as their two's-complement BIGINT.
ALTER TABLE horace_files
    ADD COLUMN stat_size BIGINT,
    ADD COLUMN stat_mtime_ns BIGINT,
    ADD COLUMN stat_ctime_ns BIGINT,
    ADD COLUMN stat_inode BIGINT,
    ADD COLUMN stat_device BIGINT,
    ADD COLUMN stat_recorded_ns BIGINT;
