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
 * A trainer's shared-memory segment in the server's --shm-dir: a new owner-only file named
 * "optsidecar-" and 32 random hex digits, holding each tensor's weights and then each tensor's
 * gradient (little-endian float32, each region at a multiple of 64 bytes), mapped here. Closing
 * it removes the file.
 */
final class ClientSegment implements AutoCloseable {
    private static final int ALIGNMENT = 64;
    private static final SecureRandom RANDOM = new SecureRandom();

    final Path path;
    final SharedSegment message;
    private final long[] weights;
    private final long[] gradients;
    private final MappedByteBuffer map;

    ClientSegment(Path dir, List<Long> numels) throws IOException {
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
        byte[] random = new byte[16];
        RANDOM.nextBytes(random);
        path = dir.resolve("optsidecar-" + HexFormat.of().formatHex(random));
        try (FileChannel channel = FileChannel.open(path, Set.of(StandardOpenOption.CREATE_NEW,
                StandardOpenOption.READ, StandardOpenOption.WRITE),
                PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")))) {
            map = channel.map(FileChannel.MapMode.READ_WRITE, 0, Math.max(at, ALIGNMENT));
        } catch (IOException | RuntimeException e) {
            Files.deleteIfExists(path);
            throw e;
        }
        map.order(ByteOrder.LITTLE_ENDIAN);
        SharedSegment.Builder b = SharedSegment.newBuilder().setName(path.getFileName().toString());
        for (int i = 0; i < n; i++) {
            b.addWeightsOffsets(weights[i]).addGradientOffsets(gradients[i]);
        }
        message = b.build();
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
        try {
            Files.deleteIfExists(path);
        } catch (IOException ignored) {
            // the server sweeps abandoned segments
        }
    }
}
