-- The permission bits of the working file when a status change (delete, archive) took it
-- out of files/: an undelete, or an archived file made active, writes it back with them
-- (a private file stays private, a script executable). NULL: not known (the file left
-- files/ otherwise, or before this step); it is then written as a new file would be.
ALTER TABLE horace_files ADD COLUMN working_mode INTEGER;
