package dev.optsidecar.client;

import com.sun.jna.LastErrorException;
import com.sun.jna.Library;
import com.sun.jna.Memory;
import com.sun.jna.Native;
import com.sun.jna.Platform;
import com.sun.jna.Pointer;

import java.nio.charset.StandardCharsets;

/**
 * The C library calls sealed segments need and the JDK does not offer (memfds and their seals, a
 * Unix socket that passes a file descriptor with SCM_RIGHTS), bound through JNA, for the trainer
 * that hands a segment over and the server that takes it. Linux on a 64-bit machine only: the
 * struct offsets below are LP64's, the same on x86-64 and arm64.
 */
public final class UnixCalls {
    private UnixCalls() {}

    public static final int AF_UNIX = 1;
    public static final int SOCK_STREAM = 1;
    public static final int SOCK_CLOEXEC = 0x80000;
    public static final int SOL_SOCKET = 1;
    public static final int SO_RCVTIMEO = 20;
    public static final int SCM_RIGHTS = 1;
    public static final int MSG_PEEK = 0x2;
    public static final int MSG_CTRUNC = 0x8;
    public static final int MSG_DONTWAIT = 0x40;
    public static final int MSG_NOSIGNAL = 0x4000;
    public static final int MSG_CMSG_CLOEXEC = 0x40000000;
    public static final int SHUT_RDWR = 2;
    public static final int MFD_CLOEXEC = 1;
    public static final int MFD_ALLOW_SEALING = 2;
    public static final int F_ADD_SEALS = 1024 + 9;
    public static final int F_GET_SEALS = 1024 + 10;
    public static final int F_SEAL_SEAL = 0x1;
    public static final int F_SEAL_SHRINK = 0x2;
    public static final int F_SEAL_GROW = 0x4;
    public static final int F_SEAL_WRITE = 0x8;
    public static final int F_SEAL_FUTURE_WRITE = 0x10;
    public static final int EINTR = 4;
    public static final int EAGAIN = 11;
    public static final int EINVAL = 22;
    /** Bytes of a {@code struct cmsghdr} before its data. */
    public static final int CMSG_HEADER = 16;

    /** The functions, as JNA binds them from the C library. */
    public interface C extends Library {
        int memfd_create(String name, int flags) throws LastErrorException;

        int ftruncate(int fd, long length) throws LastErrorException;

        int fcntl(int fd, int command, Object... argument) throws LastErrorException;

        int socket(int domain, int type, int protocol) throws LastErrorException;

        int bind(int fd, Pointer address, int length) throws LastErrorException;

        int listen(int fd, int backlog) throws LastErrorException;

        int accept4(int fd, Pointer address, Pointer length, int flags) throws LastErrorException;

        int connect(int fd, Pointer address, int length) throws LastErrorException;

        long sendmsg(int fd, Pointer message, int flags) throws LastErrorException;

        long recvmsg(int fd, Pointer message, int flags) throws LastErrorException;

        long recv(int fd, Pointer buffer, long length, int flags) throws LastErrorException;

        long send(int fd, Pointer buffer, long length, int flags) throws LastErrorException;

        int setsockopt(int fd, int level, int name, Pointer value, int length) throws LastErrorException;

        int shutdown(int fd, int how) throws LastErrorException;

        int close(int fd) throws LastErrorException;
    }

    private static final C LIBRARY;
    private static final String UNAVAILABLE;

    static {
        C library = null;
        String why = null;
        if (!Platform.isLinux() || !Platform.is64Bit()) {
            why = "sealed segments need 64-bit Linux";
        } else {
            try {
                if (System.getProperty("jna.tmpdir") == null) {
                    // JNA unpacks its stub library into ~/.cache by default, which a container with a
                    // read-only root file system lacks; the JVM's temporary directory is writable there.
                    System.setProperty("jna.tmpdir", System.getProperty("java.io.tmpdir"));
                }
                library = Native.load("c", C.class);
            } catch (LinkageError | RuntimeException e) {
                why = "the C library cannot be called from Java here: " + e.getMessage();
            }
        }
        LIBRARY = library;
        UNAVAILABLE = why;
    }

    /** Why these calls cannot be made here, or null when they can. */
    public static String unavailable() {
        return UNAVAILABLE;
    }

    /** The C library; throws IllegalStateException where {@link #unavailable} says why not. */
    public static C c() {
        if (LIBRARY == null) {
            throw new IllegalStateException(UNAVAILABLE);
        }
        return LIBRARY;
    }

    /** A {@code struct sockaddr_un} for {@code path}; null if the path does not fit (108 bytes with its NUL). */
    public static Memory unixAddress(String path) {
        byte[] bytes = path.getBytes(StandardCharsets.UTF_8);
        if (bytes.length >= 108) {
            return null;
        }
        Memory address = new Memory(2 + 108);
        address.clear();
        address.setShort(0, (short) AF_UNIX);
        address.write(2, bytes, 0, bytes.length);
        return address;
    }

    /** The length of {@link #unixAddress}'s address for {@code path}. */
    public static int unixAddressLength(String path) {
        return 2 + path.getBytes(StandardCharsets.UTF_8).length + 1;
    }

    /** A Unix stream socket connected to {@code path} (close-on-exec). */
    public static int connect(String path) {
        Memory address = unixAddress(path);
        if (address == null) {
            throw new IllegalArgumentException("the path " + path + " is too long for a Unix socket");
        }
        int s = c().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        try {
            c().connect(s, address, unixAddressLength(path));
            return s;
        } catch (LastErrorException e) {
            closeQuietly(s);
            throw e;
        }
    }

    /** Sends {@code data} in one message with descriptor {@code fd} attached (none for -1). */
    public static void sendWithDescriptor(int socket, byte[] data, int fd) {
        Memory bytes = new Memory(Math.max(1, data.length));
        bytes.write(0, data, 0, data.length);
        Memory iov = new Memory(16); // struct iovec
        iov.setPointer(0, bytes);
        iov.setLong(8, data.length);
        Memory control = new Memory(CMSG_HEADER + 8); // one descriptor, padded to 8 bytes
        control.clear();
        control.setLong(0, CMSG_HEADER + Integer.BYTES);
        control.setInt(8, SOL_SOCKET);
        control.setInt(12, SCM_RIGHTS);
        control.setInt(CMSG_HEADER, fd);
        Memory message = new Memory(56); // struct msghdr
        message.clear();
        message.setPointer(16, iov);
        message.setLong(24, 1);
        if (fd >= 0) {
            message.setPointer(32, control);
            message.setLong(40, CMSG_HEADER + 8);
        }
        c().sendmsg(socket, message, MSG_NOSIGNAL);
    }

    /** Reads exactly {@code n} bytes; throws IllegalStateException if the peer closes first. */
    public static byte[] receiveExactly(int socket, int n) {
        Memory into = new Memory(Math.max(1, n));
        for (int at = 0; at < n; ) {
            long got = c().recv(socket, into.share(at), n - at, 0);
            if (got <= 0) {
                throw new IllegalStateException("the socket closed after " + at + " of " + n + " bytes");
            }
            at += (int) got;
        }
        return into.getByteArray(0, n);
    }

    /** Closes {@code fd}; Linux frees the descriptor even when close reports an error. */
    public static void closeQuietly(int fd) {
        try {
            c().close(fd);
        } catch (LastErrorException ignored) {
            // closed anyway
        }
    }
}
