package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.VersionContributions;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;

/** Which contributions each of the most recent versions combined; guarded by the model's lock. */
final class History {
    /** Versions kept: enough for any test or audit of a run's recent past, small next to a model. */
    static final int KEPT = 100_000;
    private final ArrayDeque<VersionContributions> versions = new ArrayDeque<>();

    void record(long version, List<Contribution> contributions) {
        versions.addLast(VersionContributions.newBuilder().setVersion(version).addAllContributions(contributions).build());
        if (versions.size() > KEPT) {
            versions.removeFirst();
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
}
