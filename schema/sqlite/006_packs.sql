-- Step 006 changes no table: its number is the mark of a store that may hold packs
-- (objects/packs/, several small objects in one file). A release from before packs reads
-- only objects of their own: opening this catalog, it would take the packed versions for
-- missing, and its repair would drop their rows. Such a release refuses a catalog whose
-- schema is newer than it knows, and this step makes this one so.
SELECT 1;
