package dev.optsidecar.client;

import dev.optsidecar.proto.v1.SharedSegment;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.List;
import java.util.Set;

/**
 * A trainer's shared-memory segment, mapped here, holding each tensor's weights and then each
 * tensor's gradient (little-endian float32, each region at a multiple of 64 bytes): either a new
 * owner-only file in the server's --shm-dir named "optsidecar-" and 32 random hex digits, removed
 * when closed, or a sealed memfd handed to the server over its segment socket (see
 * {@link SealedHandoff}), which the server maps, and handed over again to a restarted server.
 */
final class ClientSegment implements AutoCloseable {
    private static final int ALIGNMENT = 64;
    private static final SecureRandom RANDOM = new SecureRandom();

    /** The server's --shm-dir as this process sees it. */
    final Path dir;
    /** The file, or null for a sealed segment. */
    private final Path path;
    private final SealedHandoff sealed;
    /** The server's segment socket in {@link #dir} now (a restarted server's has another name). */
    private final java.util.function.Supplier<Path> segmentSocket;
    private final SharedSegment layout;
    private final long[] weights;
    private final long[] gradients;
    private final MappedByteBuffer map;

    /**
     * A segment for tensors of {@code numels} elements: sealed, when {@code segmentSocket} gives a
     * socket and the server takes it, else a file in {@code dir} (or, with {@code sealedOnly},
     * an IOException saying why not).
     */
    static ClientSegment create(Path dir, List<Long> numels, java.util.function.Supplier<Path> segmentSocket,
                                boolean sealedOnly, boolean fileOnly) throws IOException {
        IOException whyNot = null;
        if (!fileOnly) {
            Path socket = segmentSocket.get();
            if (socket == null || UnixCalls.unavailable() != null) {
                whyNot = new IOException(socket == null ? "the server takes no sealed segments (no segment socket)"
                        : UnixCalls.unavailable());
            } else {
                try {
                    return new ClientSegment(dir, numels, segmentSocket, true);
                } catch (IOException e) {
                    whyNot = e;
                }
            }
        }
        if (sealedOnly) {
            throw whyNot;
        }
        return new ClientSegment(dir, numels, segmentSocket, false);
    }

    private ClientSegment(Path dir, List<Long> numels, java.util.function.Supplier<Path> segmentSocket,
                          boolean seal) throws IOException {
        this.dir = dir;
        this.segmentSocket = segmentSocket;
        int n = numels.size();
        weights = new long[n];
        gradients = new long[n];
        long at = 0;
        for (long[] offsets : new long[][] {weights, gradients}) {
            for (int i = 0; i < n; i++) {
                offsets[i] = at;
                at = (at + 4 * numels.get(i) + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
            }
        }
        if (at > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("a model of " + at + " bytes of weights and gradients is past the"
                    + " 2 GiB a Java trainer's segment holds; step with chunks");
        }
        long size = Math.max(at, ALIGNMENT);
        SharedSegment.Builder b = SharedSegment.newBuilder();
        for (int i = 0; i < n; i++) {
            b.addWeightsOffsets(weights[i]).addGradientOffsets(gradients[i]);
        }
        if (seal) {
            path = null;
            sealed = new SealedHandoff(size);
            try {
                map = sealed.channel.map(FileChannel.MapMode.READ_WRITE, 0, size);
                sealed.handOver(segmentSocket.get());
            } catch (IOException | RuntimeException e) {
                sealed.close();
                throw e;
            }
            layout = b.build();
        } else {
            sealed = null;
            byte[] random = new byte[16];
            RANDOM.nextBytes(random);
            path = dir.resolve("optsidecar-" + HexFormat.of().formatHex(random));
            try (FileChannel channel = FileChannel.open(path, Set.of(StandardOpenOption.CREATE_NEW,
                    StandardOpenOption.READ, StandardOpenOption.WRITE),
                    PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")))) {
                map = channel.map(FileChannel.MapMode.READ_WRITE, 0, size);
            } catch (IOException | RuntimeException e) {
                Files.deleteIfExists(path);
                throw e;
            }
            layout = b.setName(path.getFileName().toString()).build();
        }
        map.order(ByteOrder.LITTLE_ENDIAN);
    }

    /** Whether the server maps this segment (a sealed memfd) rather than reading a file. */
    boolean sealed() {
        return sealed != null;
    }

    /**
     * The segment as StepOpen.shared names it; a sealed segment the server no longer holds (it
     * restarted) is handed over again first, and one it will not take is UNAVAILABLE, for the
     * step to retry.
     */
    SharedSegment message() {
        if (sealed == null) {
            return layout;
        }
        if (!sealed.held()) {
            Path socket = segmentSocket.get();
            try {
                if (socket == null) {
                    throw new IOException("the server has no segment socket now");
                }
                sealed.handOver(socket);
            } catch (IOException e) {
                throw io.grpc.Status.UNAVAILABLE.withDescription("cannot hand the sealed segment over again: "
                        + e.getMessage()).withCause(e).asRuntimeException();
            }
        }
        return layout.toBuilder().setHandoffToken(com.google.protobuf.ByteString.copyFrom(sealed.token())).build();
    }

    private ByteBuffer region(long offset, long numel) {
        return map.slice((int) offset, (int) (numel * Float.BYTES)).order(ByteOrder.LITTLE_ENDIAN);
    }

    /** Copies {@code data} into tensor {@code i}'s gradient region, or its weights region for weights to set. */
    void put(int i, TensorData data, boolean weightsRegion) {
        ByteBuffer dst = region(weightsRegion ? weights[i] : gradients[i], data.numel());
        int chunk = 1 << 18;
        for (long at = 0; at < data.numel(); at += chunk) {
            data.read(at, (int) Math.min(chunk, data.numel() - at), dst); // advances dst
        }
    }

    /** Copies tensor {@code i}'s weights region into {@code out}. */
    void get(int i, TensorData out) {
        out.write(0, region(weights[i], out.numel()));
    }

    @Override
    public void close() {
        if (sealed != null) {
            sealed.close();
            return;
        }
        try {
            Files.deleteIfExists(path);
        } catch (IOException ignored) {
            // the server sweeps abandoned segments
        }
    }
}
