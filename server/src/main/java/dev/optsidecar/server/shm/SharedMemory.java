package dev.optsidecar.server.shm;

import dev.optsidecar.proto.v1.SharedSegment;
import dev.optsidecar.server.OptError;

import java.nio.file.Path;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The server's --shm-dir: the one directory whose files clients may ask it to map. Off (no
 * directory) unless the flag is given; every request for a segment is then refused with
 * FAILED_PRECONDITION, SHARED_MEMORY_UNAVAILABLE, and clients fall back to chunks.
 */
public final class SharedMemory {
    /** The prefix of the names clients create; only such files are ever removed by the server. */
    public static final String CLIENT_PREFIX = "optsidecar-";
    private static final SharedMemory OFF = new SharedMemory(null);

    private final Path dir;
    /** How many streams and calls have each name open, so the sweeper never removes a segment in use. */
    private final ConcurrentHashMap<String, AtomicInteger> open = new ConcurrentHashMap<>();

    private SharedMemory(Path dir) {
        this.dir = dir;
    }

    public static SharedMemory off() {
        return OFF;
    }

    /** Segments in {@code dir}, which must be an existing directory (its real path is used). */
    public static SharedMemory in(Path dir) throws java.io.IOException {
        return new SharedMemory(dir.toRealPath());
    }

    public boolean enabled() {
        return dir != null;
    }

    /** The directory as this server sees it; null when off. */
    public Path dir() {
        return dir;
    }

    /**
     * Validates {@code segment} against tensors of {@code numels} elements and maps it; the caller
     * closes it. {@code field} names the request's SharedSegment in errors.
     */
    public SegmentFile open(SharedSegment segment, long[] numels, String field) {
        if (dir == null) {
            throw OptError.precondition("%s: the server was started without --shm-dir, so it maps no shared memory;"
                    + " send chunks instead", field).withReason(OptError.Reason.SHARED_MEMORY_UNAVAILABLE)
                    .withField(field);
        }
        String name = SegmentName.check(segment.getName(), field + ".name");
        SegmentLayout layout = SegmentLayout.of(segment, numels, field);
        AtomicInteger uses = open.computeIfAbsent(name, n -> new AtomicInteger());
        uses.incrementAndGet();
        try {
            return SegmentFile.open(dir, name, layout, field, () -> release(name));
        } catch (RuntimeException e) {
            release(name);
            throw e;
        }
    }

    private void release(String name) {
        open.computeIfPresent(name, (n, uses) -> uses.decrementAndGet() == 0 ? null : uses);
    }

    /** How many segments are open now, for diagnostics and tests. */
    public int openSegments() {
        return open.size();
    }

    /** Whether a stream or call has {@code name} open now. */
    boolean inUse(String name) {
        return open.containsKey(name);
    }
}
