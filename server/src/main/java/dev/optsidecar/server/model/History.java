package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.VersionContributions;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.function.LongConsumer;

/**
 * Which contributions each of the most recent versions combined, as many versions and bytes as the
 * server's limits allow (oldest dropped first), counted against the memory limit; guarded by the
 * model's lock.
 */
final class History {
    private final int maxVersions;
    private final long maxBytes;
    /** Counts bytes against the memory limit (negative: gives them back). */
    private final LongConsumer memory;
    private final ArrayDeque<VersionContributions> versions = new ArrayDeque<>();
    private long bytes;

    History(int maxVersions, long maxBytes, LongConsumer memory) {
        this.maxVersions = maxVersions;
        this.maxBytes = maxBytes;
        this.memory = memory;
    }

    void record(long version, List<Contribution> contributions) {
        VersionContributions v = VersionContributions.newBuilder().setVersion(version)
                .addAllContributions(contributions).build();
        versions.addLast(v);
        long size = MemoryEstimates.historyEntry(v);
        bytes += size;
        memory.accept(size);
        while (versions.size() > maxVersions || (bytes > maxBytes && versions.size() > 1)) {
            long dropped = MemoryEstimates.historyEntry(versions.removeFirst());
            bytes -= dropped;
            memory.accept(-dropped);
        }
    }

    List<VersionContributions> from(long version) {
        List<VersionContributions> out = new ArrayList<>();
        for (VersionContributions v : versions) {
            if (Long.compareUnsigned(v.getVersion(), version) >= 0) { // from_version is a wire uint64
                out.add(v);
            }
        }
        return out;
    }

    int size() {
        return versions.size();
    }

    /** Bytes counted for the versions kept. */
    long bytes() {
        return bytes;
    }

    /** The model is deleted: gives its bytes back. */
    void clear() {
        versions.clear();
        memory.accept(-bytes);
        bytes = 0;
    }
}
