SELECT namespace, count(*) FROM metadata_stamps GROUP BY namespace;
