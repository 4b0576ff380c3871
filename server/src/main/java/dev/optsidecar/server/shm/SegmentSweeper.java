package dev.optsidecar.server.shm;

import java.io.IOException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.time.Duration;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.logging.Logger;

/**
 * Removes segments whose client died without removing them (a SIGKILL): regular files in --shm-dir
 * named like the clients' segments, which no stream or call has open and which were not modified
 * for the grace period (--idle-stream-timeout, the time after which the server would close such a
 * client's stream anyway). The server sets a segment's modification time when it unmaps it, so the
 * grace period counts from its last use. Files with other names are never touched.
 */
public final class SegmentSweeper {
    private static final Logger LOG = Logger.getLogger(SegmentSweeper.class.getName());

    private final SharedMemory shm;
    private final Duration grace;

    SegmentSweeper(SharedMemory shm, Duration grace) {
        this.shm = shm;
        this.grace = grace;
    }

    /** Sweeps every grace period; nothing when shared memory is off or the grace period is zero (never). */
    public static void schedule(SharedMemory shm, Duration grace, ScheduledExecutorService timers) {
        if (!shm.enabled() || grace.isZero()) {
            return;
        }
        SegmentSweeper sweeper = new SegmentSweeper(shm, grace);
        long period = Math.max(1, grace.toMillis());
        timers.scheduleWithFixedDelay(sweeper::sweepQuietly, period, period, TimeUnit.MILLISECONDS);
    }

    private void sweepQuietly() {
        try {
            sweep();
        } catch (IOException | RuntimeException e) {
            LOG.warning(() -> "sweeping abandoned shared segments in " + shm.dir() + " failed: " + e);
        }
    }

    /** Removes the abandoned segments now; returns how many. */
    int sweep() throws IOException {
        long cutoff = System.currentTimeMillis() - grace.toMillis();
        int removed = 0;
        try (DirectoryStream<Path> files = Files.newDirectoryStream(shm.dir(), SharedMemory.CLIENT_PREFIX + "*")) {
            for (Path file : files) {
                String name = file.getFileName().toString();
                if (shm.inUse(name)) {
                    continue;
                }
                BasicFileAttributes attrs;
                try {
                    attrs = Files.readAttributes(file, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
                } catch (IOException gone) {
                    continue;
                }
                if (attrs.isRegularFile() && attrs.lastModifiedTime().toMillis() < cutoff && !shm.inUse(name)
                        && Files.deleteIfExists(file)) {
                    removed++;
                    LOG.info(() -> "removed abandoned shared segment " + name + " (unused for " + grace.toSeconds()
                            + " s)");
                }
            }
        }
        return removed;
    }
}
