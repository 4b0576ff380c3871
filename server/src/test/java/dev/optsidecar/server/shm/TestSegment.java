package dev.optsidecar.server.shm;

import dev.optsidecar.client.UnixCalls;
import dev.optsidecar.proto.v1.SharedSegment;

import java.io.IOException;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;

/**
 * A segment as a client lays it out: every tensor's weights, then every tensor's gradient, each
 * region 8-byte aligned, mapped here so a test can write gradients and read the weights back.
 */
final class TestSegment implements AutoCloseable {
    final Path path;
    final SharedSegment message;
    private final long[] weights;
    private final long[] gradients;
    private final int[] sizes;
    private final FileChannel channel;
    private final MappedByteBuffer map;

    /** The connection a sealed segment was handed over on; -1 for a file (or once closed). */
    private int connection;

    TestSegment(Path dir, String name, int[] sizes) throws IOException {
        this(dir, name, sizes, null);
    }

    /**
     * A sealed segment (a memfd sealed against shrinking) handed over on {@code segmentSocket},
     * kept by the server while this is open.
     */
    static TestSegment sealed(Path segmentSocket, int[] sizes) throws IOException {
        return new TestSegment(null, null, sizes, segmentSocket);
    }

    private TestSegment(Path dir, String name, int[] sizes, Path segmentSocket) throws IOException {
        this.sizes = sizes;
        weights = new long[sizes.length];
        gradients = new long[sizes.length];
        long at = 0;
        for (int pass = 0; pass < 2; pass++) {
            for (int t = 0; t < sizes.length; t++) {
                (pass == 0 ? weights : gradients)[t] = at;
                at += (sizes[t] * 4L + 7) / 8 * 8;
            }
        }
        SharedSegment.Builder b = SharedSegment.newBuilder();
        for (int t = 0; t < sizes.length; t++) {
            b.addWeightsOffsets(weights[t]).addGradientOffsets(gradients[t]);
        }
        if (segmentSocket == null) {
            this.path = dir.resolve(name);
            message = b.setName(name).build();
            channel = FileChannel.open(path, StandardOpenOption.CREATE_NEW, StandardOpenOption.READ,
                    StandardOpenOption.WRITE);
            channel.truncate(at);
            channel.write(java.nio.ByteBuffer.allocate(1), at - 1); // sets the size
            connection = -1;
        } else {
            this.path = null;
            int fd = Memfds.create(at, UnixCalls.F_SEAL_SHRINK | UnixCalls.F_SEAL_GROW | UnixCalls.F_SEAL_SEAL);
            try {
                channel = FileChannel.open(Path.of("/proc/self/fd/" + fd), StandardOpenOption.READ,
                        StandardOpenOption.WRITE);
                byte[] token = new byte[32];
                new java.security.SecureRandom().nextBytes(token);
                Memfds.Handed handed = Memfds.handOver(segmentSocket.toString(), fd, token);
                if (!handed.reply().getRefused().isEmpty()) {
                    handed.close();
                    throw new IOException("the server refused the sealed segment: " + handed.reply().getRefused());
                }
                connection = handed.connection();
                message = b.setHandoffToken(com.google.protobuf.ByteString.copyFrom(token)).build();
            } finally {
                Memfds.close(fd);
            }
        }
        map = channel.map(FileChannel.MapMode.READ_WRITE, 0, at);
    }

    long size() {
        return map.capacity();
    }

    private FloatBuffer floats(long offset, int count) {
        return map.slice((int) offset, count * 4).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
    }

    void putGradients(float[][] g) {
        for (int t = 0; t < sizes.length; t++) {
            floats(gradients[t], sizes[t]).put(g[t]);
        }
    }

    void putWeights(float[][] w) {
        for (int t = 0; t < sizes.length; t++) {
            floats(weights[t], sizes[t]).put(w[t]);
        }
    }

    float[][] weights() {
        float[][] w = new float[sizes.length][];
        for (int t = 0; t < sizes.length; t++) {
            w[t] = new float[sizes[t]];
            floats(weights[t], sizes[t]).get(w[t]);
        }
        return w;
    }

    void truncate(long bytes) throws IOException {
        channel.truncate(bytes);
    }

    /** Deletes {@code dir} and what the tests left in it. */
    static void deleteDirectory(Path dir) throws IOException {
        try (var files = java.nio.file.Files.list(dir)) {
            for (Path p : files.toList()) {
                java.nio.file.Files.deleteIfExists(p);
            }
        }
        java.nio.file.Files.deleteIfExists(dir);
    }

    /** Closes the connection a sealed segment was handed over on (the server lets go once no stream uses it). */
    void closeConnection() {
        if (connection >= 0) {
            Memfds.close(connection);
            connection = -1;
        }
    }

    @Override
    public void close() throws IOException {
        channel.close();
        closeConnection();
    }
}
