package dev.optsidecar.client;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import dev.optsidecar.proto.v1.SegmentHandoffReply;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.security.SecureRandom;

/**
 * A sealed segment's memory and its handoff (see SegmentHandoffReply in the protocol): a memfd
 * sealed against shrinking, which the server maps, handed over with a random token on the
 * server's segment socket; the connection stays open while the segment is used, and is opened
 * anew (with a fresh token) when the server has lost it (a restart). Needs what
 * {@link UnixCalls} needs.
 */
final class SealedHandoff implements AutoCloseable {
    private static final int SEALS = UnixCalls.F_SEAL_SEAL | UnixCalls.F_SEAL_SHRINK | UnixCalls.F_SEAL_GROW;
    private static final SecureRandom RANDOM = new SecureRandom();

    private final int memfd;
    /** The memfd, reopened for mapping. */
    final FileChannel channel;
    private int connection = -1;
    private byte[] token;

    /** A new memfd of {@code bytes}, sealed; not handed over yet. */
    SealedHandoff(long bytes) throws IOException {
        if (UnixCalls.unavailable() != null) {
            throw new IOException(UnixCalls.unavailable());
        }
        try {
            memfd = UnixCalls.c().memfd_create("optsidecar-segment", UnixCalls.MFD_CLOEXEC | UnixCalls.MFD_ALLOW_SEALING);
        } catch (LastErrorException e) {
            throw new IOException("memfd_create: " + e.getMessage(), e);
        }
        try {
            UnixCalls.c().ftruncate(memfd, bytes);
            UnixCalls.c().fcntl(memfd, UnixCalls.F_ADD_SEALS, SEALS);
            channel = FileChannel.open(Path.of("/proc/self/fd/" + memfd), StandardOpenOption.READ,
                    StandardOpenOption.WRITE);
        } catch (LastErrorException | IOException e) {
            UnixCalls.closeQuietly(memfd);
            throw e instanceof IOException io ? io : new IOException(e.getMessage(), e);
        }
    }

    /** Whether the server still holds the segment: the connection it was handed over on is open. */
    boolean held() {
        if (connection < 0) {
            return false;
        }
        try {
            return UnixCalls.c().recv(connection, new Memory(1), 1, UnixCalls.MSG_PEEK | UnixCalls.MSG_DONTWAIT) != 0;
        } catch (LastErrorException e) {
            return e.getErrorCode() == UnixCalls.EAGAIN;
        }
    }

    /** The token the server holds the segment under. */
    byte[] token() {
        return token.clone();
    }

    /**
     * Hands the memfd to the server listening on {@code socket} with a fresh token; throws an
     * IOException saying why it was refused or could not be sent.
     */
    void handOver(Path socket) throws IOException {
        closeConnection();
        byte[] fresh = new byte[32];
        RANDOM.nextBytes(fresh);
        int s = -1;
        try {
            s = UnixCalls.connect(socket.toString());
            byte[] message = new byte[1 + fresh.length];
            message[0] = (byte) fresh.length;
            System.arraycopy(fresh, 0, message, 1, fresh.length);
            UnixCalls.sendWithDescriptor(s, message, memfd);
            int length = ByteBuffer.wrap(UnixCalls.receiveExactly(s, 4)).order(ByteOrder.LITTLE_ENDIAN).getInt();
            if (length < 0 || length > 1 << 16) {
                throw new IOException("the segment socket answered with a frame of " + length + " bytes");
            }
            SegmentHandoffReply reply = SegmentHandoffReply.parseFrom(UnixCalls.receiveExactly(s, length));
            if (!reply.getRefused().isEmpty()) {
                throw new IOException("the server refused the sealed segment: " + reply.getRefused());
            }
        } catch (LastErrorException | IllegalArgumentException | IllegalStateException e) {
            if (s >= 0) {
                UnixCalls.closeQuietly(s);
            }
            throw new IOException("cannot hand the sealed segment to " + socket + ": " + e.getMessage(), e);
        } catch (IOException e) {
            UnixCalls.closeQuietly(s);
            throw e;
        }
        connection = s;
        token = fresh;
    }

    private void closeConnection() {
        if (connection >= 0) {
            UnixCalls.closeQuietly(connection);
            connection = -1;
        }
    }

    /** Lets go of the segment: the server unmaps it once no stream uses it. */
    @Override
    public void close() {
        closeConnection();
        try {
            channel.close();
        } catch (IOException ignored) {
            // a memfd has nothing to flush
        }
        UnixCalls.closeQuietly(memfd);
    }
}
