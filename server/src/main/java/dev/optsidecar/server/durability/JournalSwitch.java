package dev.optsidecar.server.durability;

import dev.optsidecar.server.model.StepLog;
import dev.optsidecar.server.model.StepRecord;

import java.io.IOException;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * A model's step log: appends to the journal that follows the model's latest snapshot (none when
 * journaling is off), and tells its owner the version each step will produce, for snapshots every
 * N steps. Rotated to a new journal while a snapshot holds the model's read lock.
 */
final class JournalSwitch implements StepLog {
    private static final Logger LOG = Logger.getLogger(JournalSwitch.class.getName());
    private final AfterStep afterStep;
    private volatile StepJournal journal;

    /** Told after each step is recorded: the version it produces and the journal's size. */
    interface AfterStep {
        void recorded(long version, long journalBytes);
    }

    JournalSwitch(AfterStep afterStep) {
        this.afterStep = afterStep;
    }

    @Override
    public void append(StepRecord step) {
        StepJournal j = journal;
        if (j != null) {
            j.append(step);
        }
        afterStep.recorded(step.versionBefore() + 1, j == null ? 0 : j.size());
    }

    /** Sends the following steps to {@code next}; closes the journal it replaces. */
    void rotate(StepJournal next) {
        StepJournal old = journal;
        journal = next;
        close(old);
    }

    void close() {
        rotate(null);
    }

    private static void close(StepJournal j) {
        if (j != null) {
            try {
                j.close();
            } catch (IOException e) {
                LOG.log(Level.WARNING, "closing step journal " + j.file().getFileName(), e);
            }
        }
    }
}
