-- A proposal outlives the user who made it and the project it went to. Their foreign keys had no ON
-- DELETE, while every other row of a user (links, codes, memberships) and of a workspace (projects,
-- tasks) goes with it: once a user had made one proposal, DELETE FROM users (a host erasing a user, as
-- the GDPR asks) and DELETE FROM workspaces failed. The columns are nullable already, and nothing reads
-- them back but proposals.get, whose callers use only the summary and items.
--
-- Dropping and adding a foreign key locks proposals, users and projects for a moment (a scan of
-- proposals checks the new keys); the runner's lock_timeout keeps it from queueing behind a long
-- transaction.
ALTER TABLE proposals
    DROP CONSTRAINT proposals_user_id_fkey,
    ADD CONSTRAINT proposals_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL,
    DROP CONSTRAINT proposals_project_id_fkey,
    ADD CONSTRAINT proposals_project_id_fkey FOREIGN KEY (project_id) REFERENCES projects (id)
        ON DELETE SET NULL;
