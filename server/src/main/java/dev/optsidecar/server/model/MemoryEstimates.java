package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.ClientProgress;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.VersionContributions;

/**
 * The one place where the heap a model's metadata takes is estimated, so that it is counted against
 * {@code --memory-limit} along with its float buffers. The constants are deliberately generous
 * upper bounds for a 64-bit JVM (object headers, references, boxed map entries); strings count two
 * bytes per character, as Java may store them in UTF-16. Measured on 100 000 one-element Adam
 * tensors: a registration under way took 580 bytes of heap per tensor (counted: about 1 240), a
 * trainer's first step 153 per tensor (counted: 260).
 *
 * <ul>
 *   <li>a model: its spec as sent (serialized size, kept in memory as a message) plus, per tensor,
 *       {@link #TENSOR_BYTES}, the name, 8 bytes per dimension and {@link #SLOT_BYTES} per state
 *       slot (array header, slot name reference, buffer wrapper);</li>
 *   <li>a trainer: {@link #TRAINER_BYTES} plus {@link #GRADIENT_BUFFER_BYTES} per tensor, besides
 *       4 bytes per parameter;</li>
 *   <li>a ledger entry (a client's last step): {@link #ENTRY_BYTES}, the client id and the stored
 *       result's serialized size (kept without its contributions, which History holds);</li>
 *   <li>a History entry (one version's contributions): {@link #ENTRY_BYTES} plus its serialized size
 *       and, per contribution, {@link #ENTRY_BYTES} and the client id.</li>
 * </ul>
 */
final class MemoryEstimates {
    /** A tensor's TensorEntry, engine tensor, registration coverage, name map entry and step bookkeeping. */
    static final long TENSOR_BYTES = 1024;
    /** One state slot of a tensor, beyond its floats. */
    static final long SLOT_BYTES = 64;
    /** One trainer's session object and handle array. */
    static final long TRAINER_BYTES = 512;
    /** One trainer's gradient buffer of one tensor, beyond its floats. */
    static final long GRADIENT_BUFFER_BYTES = 256;
    /** A map or deque entry holding a message, with the message's own fields. */
    static final long ENTRY_BYTES = 128;

    private MemoryEstimates() {}

    static long string(String s) {
        return 2L * s.length();
    }

    /** A model's metadata before its slots are known: the spec and each tensor's bookkeeping. */
    static long model(ModelSpec spec) {
        long bytes = spec.getSerializedSize();
        for (var t : spec.getTensorsList()) {
            bytes += TENSOR_BYTES + string(t.getName()) + 8L * t.getShapeCount();
        }
        return bytes;
    }

    static long ledgerEntry(ClientProgress p) {
        return ENTRY_BYTES + string(p.getClientId()) + p.getSerializedSize();
    }

    static long historyEntry(VersionContributions v) {
        long bytes = ENTRY_BYTES + v.getSerializedSize();
        for (var c : v.getContributionsList()) {
            bytes += ENTRY_BYTES + string(c.getClientId());
        }
        return bytes;
    }
}
